//! The SDK producer against the real in-process broker: delivery, ordering, the Java
//! partitioner, headers and timestamps, no loss and no duplicates under retries, oversized
//! records and close.

mod common;

use common::start_broker;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{create_topics_request, CreateTopicsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record};
use sluice_client::partitioner::partition_for_key;
use sluice_client::topics::describe_topic;
use sluice_client::{
    ClientError, Connection, FetchConfig, Fetcher, Producer, ProducerOptions, ProducerRecord,
};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Creates `topic` with `partitions` and topic-level `configs`.
async fn create_topic(bootstrap: &str, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut connection = Connection::connect(bootstrap, TIMEOUT).await.unwrap();
    let request = CreateTopicsRequest::default()
        .with_topics(vec![create_topics_request::CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_num_partitions(partitions)
            .with_replication_factor(-1)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        create_topics_request::CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.to_string()))
                            .with_value(Some(StrBytes::from_string(v.to_string())))
                    })
                    .collect(),
            )])
        .with_timeout_ms(30_000);
    let (_, response) = connection.send(4..=7, &request).await.unwrap();
    assert_eq!(response.topics[0].error_code, 0, "{response:?}");
    // Waits for leaders.
    describe_topic(bootstrap, topic, TIMEOUT).await.unwrap();
}

/// Every record of every partition of `topic`, in offset order.
async fn read_all(bootstrap: &str, topic: &str) -> BTreeMap<i32, Vec<Record>> {
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
    let mut all = BTreeMap::new();
    for partition in layout.partitions() {
        let mut records: Vec<Record> = Vec::new();
        let mut offset = 0;
        loop {
            let fetched = fetcher
                .fetch(&[(partition, offset)])
                .await
                .unwrap()
                .wait()
                .await
                .unwrap();
            let fetched = &fetched[0];
            for batch in &fetched.batches {
                records.extend(batch.records().unwrap());
            }
            offset = fetched.next_offset(offset);
            if offset >= fetched.high_watermark {
                break;
            }
        }
        all.insert(partition, records);
    }
    all
}

fn options() -> ProducerOptions {
    ProducerOptions {
        request_timeout_ms: 10_000,
        ..ProducerOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_land_on_murmur2_partitions_in_order_with_headers_and_timestamps() {
    let (broker, _dir, _) = start_broker(&[]).await;
    let bootstrap = broker.local_addr.to_string();
    for (topic, compression) in [
        ("keyed-none", Compression::None),
        ("keyed-lz4", Compression::Lz4),
    ] {
        create_topic(&bootstrap, topic, 4, &[]).await;
        let producer = Producer::connect(
            &bootstrap,
            ProducerOptions {
                compression,
                ..options()
            },
        )
        .await
        .unwrap();
        let mut futures = Vec::new();
        for i in 0..200i64 {
            let key = format!("key-{}", i % 13);
            let record = ProducerRecord::new(topic, format!("value-{i}"))
                .with_key(key.clone())
                .with_header("index", i.to_string())
                .with_header("source", "test")
                .with_timestamp_ms(1_700_000_000_000 + i);
            futures.push((i, key, producer.send(record).await.unwrap()));
        }
        let mut last_offset: BTreeMap<i32, i64> = BTreeMap::new();
        let mut sent: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for (i, key, future) in futures {
            let metadata = future.await.unwrap();
            assert_eq!(metadata.partition, partition_for_key(key.as_bytes(), 4));
            assert_eq!(metadata.timestamp_ms, 1_700_000_000_000 + i);
            if let Some(previous) = last_offset.insert(metadata.partition, metadata.offset) {
                assert!(metadata.offset > previous, "offsets increase in send order");
            }
            sent.entry(metadata.partition).or_default().push(i);
        }
        producer.close().await;
        let read = read_all(&bootstrap, topic).await;
        let mut total = 0;
        for (partition, records) in &read {
            let expected = sent.get(partition).cloned().unwrap_or_default();
            let got: Vec<i64> = records
                .iter()
                .map(|r| {
                    let value = String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap();
                    value.strip_prefix("value-").unwrap().parse().unwrap()
                })
                .collect();
            assert_eq!(got, expected, "partition {partition} in send order");
            for record in records {
                let value = String::from_utf8(record.value.clone().unwrap().to_vec()).unwrap();
                let i: i64 = value.strip_prefix("value-").unwrap().parse().unwrap();
                assert_eq!(record.key, Some(Bytes::from(format!("key-{}", i % 13))));
                assert_eq!(record.timestamp, 1_700_000_000_000 + i);
                let index = record
                    .headers
                    .get(&StrBytes::from_static_str("index"))
                    .cloned()
                    .flatten();
                assert_eq!(index, Some(Bytes::from(i.to_string())));
                let source = record
                    .headers
                    .get(&StrBytes::from_static_str("source"))
                    .cloned()
                    .flatten();
                assert_eq!(source, Some(Bytes::from_static(b"test")));
                assert!(record.producer_id >= 0, "idempotent by default");
            }
            total += records.len();
        }
        assert_eq!(total, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_and_no_duplicates_when_produce_responses_are_dropped() {
    // The broker appends every batch but drops every 3rd Produce response: the client
    // times out, reconnects and retries batches the broker already has.
    let (broker, _dir, _) = start_broker(&[("test.fault.produce.response.drop.every", "3")]).await;
    let bootstrap = broker.local_addr.to_string();
    let topic = "retried";
    create_topic(&bootstrap, topic, 3, &[]).await;
    let producer = Producer::connect(
        &bootstrap,
        ProducerOptions {
            request_timeout_ms: 500,
            linger_ms: 2,
            batch_size_bytes: 400,
            ..ProducerOptions::default()
        },
    )
    .await
    .unwrap();
    let count = 600;
    let mut futures = Vec::new();
    for i in 0..count {
        let record = ProducerRecord::new(topic, format!("{i}")).with_key(format!("k{}", i % 7));
        futures.push(producer.send(record).await.unwrap());
        if i % 50 == 0 {
            // Several rounds of requests, so several responses are dropped.
            tokio::task::yield_now().await;
        }
    }
    for future in futures {
        future.await.unwrap();
    }
    producer.close().await;
    let read = read_all(&bootstrap, topic).await;
    let mut seen = vec![0u32; count];
    for (partition, records) in &read {
        let mut last_per_key: BTreeMap<Bytes, usize> = BTreeMap::new();
        for record in records {
            let i: usize = std::str::from_utf8(record.value.as_ref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            seen[i] += 1;
            let key = record.key.clone().unwrap();
            assert_eq!(partition_for_key(&key, 3), *partition);
            if let Some(previous) = last_per_key.insert(key, i) {
                assert!(
                    i > previous,
                    "record {i} after {previous}: order per key kept"
                );
            }
        }
    }
    let missing: Vec<usize> = (0..count).filter(|i| seen[*i] == 0).collect();
    let duplicated: Vec<usize> = (0..count).filter(|i| seen[*i] > 1).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_max_message_bytes_fails_alone_with_message_too_large() {
    let (broker, _dir, _) = start_broker(&[]).await;
    let bootstrap = broker.local_addr.to_string();
    let topic = "small-messages";
    create_topic(&bootstrap, topic, 1, &[("max.message.bytes", "2000")]).await;
    let producer = Producer::connect(&bootstrap, options()).await.unwrap();
    let mut futures = Vec::new();
    for i in 0..11 {
        let value = if i == 5 {
            vec![b'x'; 5_000]
        } else {
            format!("small-{i}").into_bytes()
        };
        futures.push((
            i,
            producer
                .send(ProducerRecord::new(topic, value))
                .await
                .unwrap(),
        ));
    }
    for (i, future) in futures {
        let result = future.await;
        if i == 5 {
            match result {
                Err(ClientError::Kafka { name, code, .. }) => {
                    assert_eq!(name, "MESSAGE_TOO_LARGE");
                    assert_eq!(code, 10);
                }
                other => panic!("expected MESSAGE_TOO_LARGE, got {other:?}"),
            }
        } else {
            result.unwrap();
        }
    }
    // Records after the failed one still go through (new epoch, new sequences).
    let later = producer
        .send(ProducerRecord::new(topic, "small-after"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(later.partition, 0);
    producer.close().await;
    let values: Vec<String> = read_all(&bootstrap, topic).await[&0]
        .iter()
        .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
        .collect();
    let mut expected: Vec<String> = (0..11)
        .filter(|i| *i != 5)
        .map(|i| format!("small-{i}"))
        .collect();
    expected.push("small-after".to_string());
    assert_eq!(values, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_flush_auto_creation_and_close() {
    let (broker, _dir, _) = start_broker(&[
        ("auto.create.topics.enable", "true"),
        ("num.partitions", "3"),
    ])
    .await;
    let bootstrap = broker.local_addr.to_string();
    let producer = Producer::connect(
        &bootstrap,
        ProducerOptions {
            // Long enough that only flush() sends the batches.
            linger_ms: 600_000,
            ..options()
        },
    )
    .await
    .unwrap();
    // The topic does not exist: Metadata with allow_auto_topic_creation creates it.
    assert_eq!(producer.partition_count("auto-created").await.unwrap(), 3);
    let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
    for i in 0..50 {
        let delivered = Arc::clone(&delivered);
        producer
            .send_with_callback(
                ProducerRecord::new("auto-created", format!("{i}")),
                move |result| delivered.lock().unwrap().push(result.map(|m| m.partition)),
            )
            .await
            .unwrap();
    }
    // From another task through a clone.
    let clone = producer.clone();
    let pending = tokio::spawn(async move {
        clone
            .send(ProducerRecord::new("auto-created", "from-task").with_partition(2))
            .await
    })
    .await
    .unwrap()
    .unwrap();
    producer.flush().await;
    {
        let delivered = delivered.lock().unwrap();
        assert_eq!(delivered.len(), 50, "flush waits for every callback");
        assert!(delivered.iter().all(|r| r.is_ok()));
    }
    assert_eq!(pending.await.unwrap().partition, 2);
    let read = read_all(&bootstrap, "auto-created").await;
    assert_eq!(read.values().map(Vec::len).sum::<usize>(), 51);
    // An explicit partition outside the topic fails before anything is queued.
    let error = producer
        .send(ProducerRecord::new("auto-created", "x").with_partition(7))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(error, ClientError::Kafka { code: 3, .. }),
        "{error}"
    );
    producer.close().await;
    let error = producer
        .send(ProducerRecord::new("auto-created", "late"))
        .await
        .err()
        .unwrap();
    assert!(matches!(error, ClientError::ProducerClosed), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_is_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let error = Producer::connect(&address, options()).await.err().unwrap();
    assert!(
        matches!(error, ClientError::Connect { .. }),
        "expected a connect error, got {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_stick_to_one_partition_per_batch() {
    let (broker, _dir, _) = start_broker(&[]).await;
    let bootstrap = broker.local_addr.to_string();
    create_topic(&bootstrap, "sticky", 4, &[]).await;
    let producer = Producer::connect(
        &bootstrap,
        ProducerOptions {
            // Batches are only sent by flush(): each round fills one open batch.
            linger_ms: 600_000,
            ..options()
        },
    )
    .await
    .unwrap();
    let mut previous: Option<i32> = None;
    for round in 0..5 {
        let mut futures = Vec::new();
        for i in 0..20 {
            let record = ProducerRecord::new("sticky", format!("{round}-{i}"));
            futures.push(producer.send(record).await.unwrap());
        }
        producer.flush().await;
        let mut partitions = std::collections::BTreeSet::new();
        for future in futures {
            partitions.insert(future.await.unwrap().partition);
        }
        assert_eq!(
            partitions.len(),
            1,
            "one batch, one partition: {partitions:?}"
        );
        let partition = *partitions.first().unwrap();
        assert_ne!(
            Some(partition),
            previous,
            "a sent batch moves the sticky partition"
        );
        previous = Some(partition);
    }
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_blocks_send_until_max_block_ms() {
    let (broker, _dir, _) = start_broker(&[]).await;
    let bootstrap = broker.local_addr.to_string();
    create_topic(&bootstrap, "pressure", 1, &[]).await;
    let producer = Producer::connect(
        &bootstrap,
        ProducerOptions {
            linger_ms: 600_000,
            buffer_memory_bytes: 4_096,
            max_block_ms: 200,
            ..options()
        },
    )
    .await
    .unwrap();
    let value = vec![b'v'; 1_000];
    let mut accepted = Vec::new();
    let error = loop {
        match producer
            .send(ProducerRecord::new("pressure", value.clone()))
            .await
        {
            Ok(future) => accepted.push(future),
            Err(error) => break error,
        }
        assert!(accepted.len() < 10, "the buffer must fill up");
    };
    assert!(matches!(error, ClientError::Timeout(..)), "{error}");
    assert!(error.to_string().contains("buffer memory"), "{error}");
    let accepted_count = accepted.len();
    assert!(accepted_count >= 1);
    // Delivery frees the buffer.
    producer.flush().await;
    for future in accepted {
        future.await.unwrap();
    }
    producer
        .send(ProducerRecord::new("pressure", value))
        .await
        .unwrap();
    producer.close().await;
    assert_eq!(
        read_all(&bootstrap, "pressure").await[&0].len(),
        accepted_count + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_one_and_zero_deliver_without_idempotence() {
    let (broker, _dir, _) = start_broker(&[]).await;
    let bootstrap = broker.local_addr.to_string();
    create_topic(&bootstrap, "acks", 2, &[]).await;
    for acks in [1i16, 0] {
        let producer = Producer::connect(
            &bootstrap,
            ProducerOptions {
                acks,
                compression: Compression::Zstd,
                ..options()
            },
        )
        .await
        .unwrap();
        let mut futures = Vec::new();
        for i in 0..50 {
            let record =
                ProducerRecord::new("acks", format!("acks{acks}-{i}")).with_partition(i % 2);
            futures.push(producer.send(record).await.unwrap());
        }
        for future in futures {
            let metadata = future.await.unwrap();
            if acks == 0 {
                assert_eq!(metadata.offset, -1, "acks=0: no offset comes back");
            } else {
                assert!(metadata.offset >= 0);
            }
        }
        producer.close().await;
    }
    let read = read_all(&bootstrap, "acks").await;
    let records: Vec<&Record> = read.values().flatten().collect();
    assert_eq!(records.len(), 100);
    assert!(
        records.iter().all(|r| r.producer_id == -1),
        "not idempotent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_fail_with_a_timeout_once_delivery_timeout_passes_without_a_broker() {
    let (broker, _dir, _) = start_broker(&[]).await;
    let bootstrap = broker.local_addr.to_string();
    create_topic(&bootstrap, "gone", 1, &[]).await;
    let producer = Producer::connect(
        &bootstrap,
        ProducerOptions {
            request_timeout_ms: 300,
            delivery_timeout_ms: 1_500,
            ..ProducerOptions::default()
        },
    )
    .await
    .unwrap();
    let first = producer
        .send(ProducerRecord::new("gone", "before"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(first.offset, 0);
    broker.shutdown().await;
    // The topic's metadata is cached: the record is accepted, then retried until
    // delivery_timeout_ms passes.
    let result = producer
        .send(ProducerRecord::new("gone", "after"))
        .await
        .unwrap()
        .await;
    match result {
        Err(ClientError::Timeout(after, what)) => {
            assert_eq!(after, Duration::from_millis(1_500));
            assert!(what.contains("gone-0"), "{what}");
        }
        other => panic!("expected a delivery timeout, got {other:?}"),
    }
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_returns_only_after_every_callback_ran() {
    let (broker, _dir, _) = start_broker(&[("num.partitions", "4")]).await;
    let bootstrap = broker.local_addr.to_string();
    let producer = Producer::connect(
        &bootstrap,
        ProducerOptions {
            // Many small batches, so many completions race with flush.
            batch_size_bytes: 200,
            ..options()
        },
    )
    .await
    .unwrap();
    let called = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for round in 0..5 {
        for i in 0..400 {
            let called = Arc::clone(&called);
            producer
                .send_with_callback(
                    ProducerRecord::new("callbacks", format!("{round}-{i}")),
                    move |result| {
                        assert!(result.is_ok());
                        // A slow callback widens the window between a batch's completion
                        // and its callbacks having run.
                        if i % 50 == 0 {
                            std::thread::sleep(std::time::Duration::from_millis(2));
                        }
                        called.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    },
                )
                .await
                .unwrap();
        }
        producer.flush().await;
        assert_eq!(
            called.load(std::sync::atomic::Ordering::SeqCst),
            (round + 1) * 400,
            "flush returned before every callback of round {round} ran"
        );
    }
    producer.close().await;
    broker.shutdown().await;
}
