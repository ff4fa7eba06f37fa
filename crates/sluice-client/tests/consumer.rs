//! The SDK consumer against the real broker, started in-process.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice_client::consumer::{AutoOffsetReset, Consumer, ConsumerOptions, RebalanceListener};
use sluice_client::{ensure_topic, BatchProducer, ConsumerRecord, ProducerConfig, TopicPartition};

const WAIT: Duration = Duration::from_secs(60);

async fn start_broker() -> (sluice_broker::RunningBroker, tempfile::TempDir, String) {
    // `SLUICE_LOG=sluice_client=debug` shows the group protocol of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("SLUICE_LOG").unwrap_or_else(|_| "warn".to_string()),
        ))
        .with_test_writer()
        .try_init();
    common::start_broker(&[("group.initial.rebalance.delay.ms", "0")]).await
}

fn options(group: Option<&str>) -> ConsumerOptions {
    ConsumerOptions {
        group_id: group.map(str::to_string),
        session_timeout_ms: 10_000,
        heartbeat_interval_ms: 100,
        fetch_max_wait_ms: 100,
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerOptions::default()
    }
}

/// Produces `values` to one partition as one batch; each record gets key `k<value>` and a
/// header `h` = value. Returns the base offset.
async fn produce(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    partition: i32,
    values: &[String],
) -> i64 {
    let layout = ensure_topic(bootstrap, topic, partitions, -1, Duration::from_secs(10))
        .await
        .unwrap();
    let producer = BatchProducer::connect(layout, ProducerConfig::default())
        .await
        .unwrap();
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let mut headers = IndexMap::new();
            headers.insert(
                StrBytes::from_static_str("h"),
                Some(Bytes::from(value.clone())),
            );
            Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32 - 1,
                timestamp: 1_700_000_000_000 + i as i64,
                key: Some(Bytes::from(format!("k{value}"))),
                value: Some(Bytes::from(value.clone())),
                headers,
            }
        })
        .collect();
    let mut batch = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut batch, records.iter(), &options).unwrap();
    let acks = producer
        .send(partition, batch.freeze())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    acks[0].1.as_ref().unwrap().unwrap()
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn value(record: &ConsumerRecord) -> String {
    String::from_utf8(record.value.clone().unwrap().to_vec()).unwrap()
}

/// Polls until `n` records arrived (or fails after WAIT).
async fn poll_n(consumer: &mut Consumer, n: usize) -> Vec<ConsumerRecord> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} records arrived",
            out.len()
        );
        out.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_and_seek_read_exactly_what_was_produced() {
    let (_broker, _dir, bootstrap) = start_broker().await;
    produce(&bootstrap, "assigned", 2, 0, &values("a", 10)).await;
    produce(&bootstrap, "assigned", 2, 1, &values("b", 10)).await;

    let mut consumer = Consumer::connect(&bootstrap, options(None)).await.unwrap();
    let p0 = TopicPartition::new("assigned", 0);
    let p1 = TopicPartition::new("assigned", 1);
    consumer.assign(vec![p0.clone(), p1.clone()]).unwrap();
    consumer.seek(&p0, 3).unwrap();
    consumer
        .seek_to_beginning(std::slice::from_ref(&p1))
        .await
        .unwrap();
    assert_eq!(consumer.position(&p0).await.unwrap(), 3);
    assert_eq!(consumer.position(&p1).await.unwrap(), 0);

    let records = poll_n(&mut consumer, 17).await;
    let mut from_p0: Vec<&ConsumerRecord> = records.iter().filter(|r| r.partition == 0).collect();
    let from_p1: Vec<&ConsumerRecord> = records.iter().filter(|r| r.partition == 1).collect();
    from_p0.sort_by_key(|r| r.offset);
    assert_eq!(
        from_p0.iter().map(|r| value(r)).collect::<Vec<_>>(),
        values("a", 10)[3..].to_vec()
    );
    assert_eq!(
        from_p0.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (3..10).collect::<Vec<_>>()
    );
    assert_eq!(
        from_p1.iter().map(|r| value(r)).collect::<Vec<_>>(),
        values("b", 10)
    );
    let first = from_p1[0];
    assert_eq!(first.key.as_deref(), Some(&b"kb-0"[..]));
    assert_eq!(
        first.header("h").unwrap().value.as_deref(),
        Some(&b"b-0"[..])
    );
    assert_eq!(first.timestamp_ms, 1_700_000_000_000);
    // Nothing more, and positions at the end.
    assert!(consumer
        .poll(Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(consumer.position(&p0).await.unwrap(), 10);
    assert_eq!(consumer.position(&p1).await.unwrap(), 10);
    // Without a group nothing can be committed.
    assert!(consumer.commit_records(&records).await.is_err());
    consumer
        .seek_to_end(std::slice::from_ref(&p0))
        .await
        .unwrap();
    assert_eq!(consumer.position(&p0).await.unwrap(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_offset_reset_earliest_and_latest() {
    let (_broker, _dir, bootstrap) = start_broker().await;
    produce(&bootstrap, "reset", 1, 0, &values("old", 5)).await;
    let tp = TopicPartition::new("reset", 0);

    let mut earliest = Consumer::connect(&bootstrap, options(Some("reset-earliest")))
        .await
        .unwrap();
    earliest.subscribe(&["reset"]).await.unwrap();
    let records = poll_n(&mut earliest, 5).await;
    assert_eq!(records[0].offset, 0);

    let mut latest_options = options(Some("reset-latest"));
    latest_options.auto_offset_reset = AutoOffsetReset::Latest;
    let mut latest = Consumer::connect(&bootstrap, latest_options).await.unwrap();
    latest.assign(vec![tp.clone()]).unwrap();
    assert_eq!(latest.position(&tp).await.unwrap(), 5);
    produce(&bootstrap, "reset", 1, 0, &values("new", 3)).await;
    let records = poll_n(&mut latest, 3).await;
    assert_eq!(
        records.iter().map(value).collect::<Vec<_>>(),
        values("new", 3)
    );
    assert_eq!(
        records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );

    let mut none_options = options(Some("reset-none"));
    none_options.auto_offset_reset = AutoOffsetReset::None;
    let mut none = Consumer::connect(&bootstrap, none_options).await.unwrap();
    none.assign(vec![tp.clone()]).unwrap();
    assert!(matches!(
        none.position(&tp).await,
        Err(sluice_client::ClientError::NoOffset(_))
    ));
    earliest.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_commit_then_restart_resumes_from_the_committed_offset() {
    let (_broker, _dir, bootstrap) = start_broker().await;
    produce(&bootstrap, "resume", 1, 0, &values("r", 20)).await;
    let mut first_options = options(Some("resume-group"));
    first_options.max_poll_records = 7;
    let mut first = Consumer::connect(&bootstrap, first_options).await.unwrap();
    first.subscribe(&["resume"]).await.unwrap();
    let records = poll_n(&mut first, 7).await;
    // Process and commit only the first 7 records.
    first.commit_records(&records[..7]).await.unwrap();
    let tp = TopicPartition::new("resume", 0);
    assert_eq!(
        first.committed(std::slice::from_ref(&tp)).await.unwrap()[&tp],
        7
    );
    first.close().await.unwrap();

    let mut second = Consumer::connect(&bootstrap, options(Some("resume-group")))
        .await
        .unwrap();
    second.subscribe(&["resume"]).await.unwrap();
    let records = poll_n(&mut second, 13).await;
    assert_eq!(records[0].offset, 7);
    assert_eq!(
        records.iter().map(value).collect::<Vec<_>>(),
        values("r", 20)[7..].to_vec()
    );
    second.commit_sync().await.unwrap();
    assert_eq!(
        second.committed(std::slice::from_ref(&tp)).await.unwrap()[&tp],
        20
    );
    second.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_sees_the_configured_client_id() {
    let (_broker, _dir, bootstrap) = start_broker().await;
    produce(&bootstrap, "named", 1, 0, &values("n", 3)).await;
    let mut named = options(Some("named-group"));
    named.client_id = "billing-worker-7".to_string();
    let mut consumer = Consumer::connect(&bootstrap, named).await.unwrap();
    consumer.subscribe(&["named"]).await.unwrap();
    poll_n(&mut consumer, 3).await;
    let mut admin = sluice_client::Admin::connect(&bootstrap, Duration::from_secs(10))
        .await
        .unwrap();
    let group = admin.describe_group("named-group").await.unwrap();
    let client_ids: Vec<&str> = group.members.iter().map(|m| m.client_id.as_str()).collect();
    assert_eq!(client_ids, ["billing-worker-7"]);
    consumer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_a_partition_until_resume() {
    let (_broker, _dir, bootstrap) = start_broker().await;
    produce(&bootstrap, "pausing", 2, 0, &values("p0", 4)).await;
    produce(&bootstrap, "pausing", 2, 1, &values("p1", 4)).await;
    let p0 = TopicPartition::new("pausing", 0);
    let p1 = TopicPartition::new("pausing", 1);
    let mut consumer = Consumer::connect(&bootstrap, options(None)).await.unwrap();
    consumer.assign(vec![p0.clone(), p1.clone()]).unwrap();
    consumer.pause(std::slice::from_ref(&p0)).unwrap();
    assert_eq!(consumer.paused(), vec![p0.clone()]);
    let records = poll_n(&mut consumer, 4).await;
    assert!(records.iter().all(|r| r.partition == 1));
    for _ in 0..3 {
        assert!(consumer
            .poll(Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty());
    }
    assert_eq!(consumer.position(&p0).await.unwrap(), 0);
    consumer.resume(std::slice::from_ref(&p0)).unwrap();
    let records = poll_n(&mut consumer, 4).await;
    assert_eq!(
        records.iter().map(value).collect::<Vec<_>>(),
        values("p0", 4)
    );
}

/// What a group member's task reports.
#[derive(Default)]
struct MemberView {
    assignment: BTreeSet<TopicPartition>,
    records: Vec<(TopicPartition, i64)>,
    events: Vec<String>,
}

struct Recorder(Arc<Mutex<MemberView>>);

impl RebalanceListener for Recorder {
    fn on_partitions_revoked(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Vec<(TopicPartition, i64)> {
        let mut view = self.0.lock().unwrap();
        for tp in partitions {
            view.events.push(format!("revoked {tp}"));
        }
        Vec::new()
    }
    fn on_partitions_assigned(&mut self, partitions: &[TopicPartition]) {
        let mut view = self.0.lock().unwrap();
        for tp in partitions {
            view.events.push(format!("assigned {tp}"));
        }
    }
    fn on_partitions_lost(&mut self, partitions: &[TopicPartition]) {
        let mut view = self.0.lock().unwrap();
        for tp in partitions {
            view.events.push(format!("lost {tp}"));
        }
    }
}

struct Member {
    view: Arc<Mutex<MemberView>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// A group member consuming in its own task: poll, record, commit after processing.
async fn member(bootstrap: &str, group: &str, topic: &str) -> Member {
    let view = Arc::new(Mutex::new(MemberView::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumer = Consumer::connect(bootstrap, options(Some(group)))
        .await
        .unwrap();
    consumer.set_rebalance_listener(Box::new(Recorder(view.clone())));
    consumer.subscribe(&[topic]).await.unwrap();
    let task = {
        let (view, stop) = (view.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let records = consumer.poll(Duration::from_millis(100)).await.unwrap();
                {
                    let mut view = view.lock().unwrap();
                    view.records
                        .extend(records.iter().map(|r| (r.topic_partition(), r.offset)));
                    view.assignment = consumer.assignment().into_iter().collect();
                }
                consumer.commit_records(&records).await.unwrap();
            }
            consumer.close().await.unwrap();
        })
    };
    Member { view, stop, task }
}

impl Member {
    fn assignment(&self) -> BTreeSet<TopicPartition> {
        self.view.lock().unwrap().assignment.clone()
    }
    fn events(&self) -> Vec<String> {
        self.view.lock().unwrap().events.clone()
    }
    async fn leave(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
    }
}

/// Waits until the members' assignments are disjoint, cover all `partitions` and have
/// the given sizes.
async fn wait_balanced(
    members: &[&Member],
    partitions: i32,
    sizes: &[usize],
) -> Vec<BTreeSet<TopicPartition>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let assignments: Vec<BTreeSet<TopicPartition>> =
            members.iter().map(|m| m.assignment()).collect();
        let union: BTreeSet<&TopicPartition> = assignments.iter().flatten().collect();
        let total: usize = assignments.iter().map(|a| a.len()).sum();
        let mut got: Vec<usize> = assignments.iter().map(|a| a.len()).collect();
        got.sort();
        if total == partitions as usize && union.len() == total && got == sizes {
            return assignments;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never balanced: {assignments:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `n` records were read in total.
async fn wait_read(members: &[&Member], n: usize) -> Vec<(TopicPartition, i64)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let read: Vec<(TopicPartition, i64)> = members
            .iter()
            .flat_map(|m| m.view.lock().unwrap().records.clone())
            .collect();
        if read.len() >= n {
            return read;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} records read",
            read.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn produce_round(bootstrap: &str, topic: &str, round: &str) {
    for partition in 0..6 {
        produce(
            bootstrap,
            topic,
            6,
            partition,
            &values(&format!("{round}{partition}"), 10),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_splits_partitions_and_cooperative_rebalances_move_only_what_must_move() {
    let (_broker, _dir, bootstrap) = start_broker().await;
    let topic = "shared";
    ensure_topic(&bootstrap, topic, 6, -1, Duration::from_secs(10))
        .await
        .unwrap();
    produce_round(&bootstrap, topic, "one").await;

    let a = member(&bootstrap, "sharing", topic).await;
    let b = member(&bootstrap, "sharing", topic).await;
    let two = wait_balanced(&[&a, &b], 6, &[3, 3]).await;
    wait_read(&[&a, &b], 60).await;
    let a_seen = a.events().len();

    // A third member joins: each of a and b gives up exactly one partition and keeps two.
    let c = member(&bootstrap, "sharing", topic).await;
    produce_round(&bootstrap, topic, "two").await;
    let three = wait_balanced(&[&a, &b, &c], 6, &[2, 2, 2]).await;
    assert!(
        three[0].is_subset(&two[0]),
        "a kept {:?} of {:?}",
        three[0],
        two[0]
    );
    assert!(
        three[1].is_subset(&two[1]),
        "b kept {:?} of {:?}",
        three[1],
        two[1]
    );
    wait_read(&[&a, &b, &c], 120).await;
    let moved_from_a: Vec<String> = two[0]
        .difference(&three[0])
        .map(|tp| format!("revoked {tp}"))
        .collect();
    let a_revoked: Vec<String> = a.events()[a_seen..]
        .iter()
        .filter(|e| e.starts_with("revoked"))
        .cloned()
        .collect();
    assert_eq!(
        a_revoked,
        moved_from_a,
        "a heard {:?} (from {a_seen})",
        a.events()
    );
    let c_assigned: BTreeSet<String> = c
        .events()
        .into_iter()
        .filter(|e| e.starts_with("assigned"))
        .collect();
    assert_eq!(
        c_assigned,
        three[2]
            .iter()
            .map(|tp| format!("assigned {tp}"))
            .collect::<BTreeSet<_>>()
    );

    // b leaves: its two partitions go to a and c, who keep theirs.
    let b_view = b.view.clone();
    b.leave().await;
    produce_round(&bootstrap, topic, "three").await;
    let after = wait_balanced(&[&a, &c], 6, &[3, 3]).await;
    assert!(after[0].is_superset(&three[0]));
    assert!(after[1].is_superset(&three[2]));

    let b_records = b_view.lock().unwrap().records.clone();
    let mut read = wait_read(&[&a, &c], 180 - b_records.len()).await;
    read.extend(b_records);
    let unique: BTreeSet<&(TopicPartition, i64)> = read.iter().collect();
    assert_eq!(unique.len(), read.len(), "a record was read twice");
    assert_eq!(read.len(), 180);
    let mut per_partition: BTreeMap<i32, usize> = BTreeMap::new();
    for (tp, _) in &read {
        *per_partition.entry(tp.partition).or_default() += 1;
    }
    assert!(
        per_partition.values().all(|n| *n == 30),
        "{per_partition:?}"
    );
    a.leave().await;
    c.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_commit_commits_the_positions_on_close() {
    let (_broker, _dir, bootstrap) = start_broker().await;
    produce(&bootstrap, "auto", 1, 0, &values("x", 6)).await;
    let mut auto = options(Some("auto-group"));
    auto.enable_auto_commit = true;
    auto.max_poll_records = 4;
    let mut consumer = Consumer::connect(&bootstrap, auto).await.unwrap();
    consumer.subscribe(&["auto"]).await.unwrap();
    let records = poll_n(&mut consumer, 4).await;
    assert_eq!(records.len(), 4);
    consumer.close().await.unwrap();

    let mut check = Consumer::connect(&bootstrap, options(Some("auto-group")))
        .await
        .unwrap();
    let tp = TopicPartition::new("auto", 0);
    assert_eq!(
        check.committed(std::slice::from_ref(&tp)).await.unwrap()[&tp],
        4
    );
}

/// Commits, on revocation, the offset it was told was processed.
struct CommitOnRevoke(i64);

impl RebalanceListener for CommitOnRevoke {
    fn on_partitions_revoked(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Vec<(TopicPartition, i64)> {
        partitions.iter().map(|tp| (tp.clone(), self.0)).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_returned_by_the_revoke_listener_are_committed() {
    let (_broker, _dir, bootstrap) = start_broker().await;
    produce(&bootstrap, "revoking", 1, 0, &values("y", 5)).await;
    let mut consumer = Consumer::connect(&bootstrap, options(Some("revoke-group")))
        .await
        .unwrap();
    consumer.set_rebalance_listener(Box::new(CommitOnRevoke(3)));
    consumer.subscribe(&["revoking"]).await.unwrap();
    poll_n(&mut consumer, 5).await;
    consumer.close().await.unwrap();
    let mut check = Consumer::connect(&bootstrap, options(Some("revoke-group")))
        .await
        .unwrap();
    let tp = TopicPartition::new("revoking", 0);
    assert_eq!(
        check.committed(std::slice::from_ref(&tp)).await.unwrap()[&tp],
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_out_of_range_resets_by_auto_offset_reset() {
    let (_broker, _dir, bootstrap) = start_broker().await;
    produce(&bootstrap, "outofrange", 1, 0, &values("z", 3)).await;
    let tp = TopicPartition::new("outofrange", 0);
    let mut consumer = Consumer::connect(&bootstrap, options(None)).await.unwrap();
    consumer.assign(vec![tp.clone()]).unwrap();
    consumer.seek(&tp, 100).unwrap();
    let records = poll_n(&mut consumer, 3).await;
    assert_eq!(
        records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
}
