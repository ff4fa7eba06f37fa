//! The processing helper of a consumer: hands each record to a user handler, in order per
//! key and in parallel across keys, retries failures with backoff, parks records that keep
//! failing in a dead-letter topic, skips records already handled (dedup hook), and tells the
//! consumer which offsets are safe to commit.
//!
//! The consumer feeds records with [`Processor::submit`] (in offset order per partition) and
//! commits [`Processor::committable`] after polls; on a rebalance it calls
//! [`Processor::revoke`] for the partitions it loses and commits what that returns.
//!
//! Ordering: a *lane* is (topic, partition, key), or (topic, partition) for keyless
//! records. A lane runs one record at a time in offset order, also while that record waits
//! between retries; different lanes run in parallel, at most `concurrency` handlers at once.
//!
//! Commits: per partition the committable offset is the lowest offset not finished
//! (handled, dead-lettered or deduplicated), so a commit never passes a record in flight.
//!
//! A dead-letter publish that fails *halts* the partition: the record was neither handled
//! nor parked, so the partition's committable offset stays at it, its queued records are
//! dropped, and [`Processor::submit`] rejects the partition's records until the consumer
//! calls [`Processor::revoke`] for it and seeks back to the returned offset.

pub mod dead_letter;
pub mod retry;
pub mod tracker;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::dedup::{DedupKey, Deduplicator, InFlightIds};
use crate::record::{ConsumerRecord, TopicPartition};

pub use dead_letter::{
    dead_letter_headers, dead_letter_record, replay_record, BoxFuture, DeadLetterError,
    DeadLetterInfo, DeadLetterSink, DeadLetterTopic,
};
pub use retry::RetryConfig;
pub use tracker::{OffsetNotIncreasing, OffsetTracker};

/// A handler's failure. Retriable by default; [`HandlerError::permanent`] sends the record
/// to the dead-letter topic without further attempts (a record that can never succeed,
/// such as one that does not parse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    pub message: String,
    pub retriable: bool,
}

impl HandlerError {
    pub fn new(message: impl std::fmt::Display) -> HandlerError {
        HandlerError {
            message: message.to_string(),
            retriable: true,
        }
    }

    pub fn permanent(message: impl std::fmt::Display) -> HandlerError {
        HandlerError {
            message: message.to_string(),
            retriable: false,
        }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<anyhow::Error> for HandlerError {
    fn from(error: anyhow::Error) -> Self {
        HandlerError::new(format!("{error:#}"))
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        HandlerError::new(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        HandlerError::new(message)
    }
}

/// Why the processor did not take or could not finish records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessorError {
    #[error("partition {0} is being revoked; records of it are not accepted")]
    Revoked(TopicPartition),
    #[error(
        "partition {partition} is halted ({reason}); revoke it and seek back to its committable offset"
    )]
    Halted {
        partition: TopicPartition,
        reason: String,
    },
    #[error("offset {offset} of {partition} submitted after offset {next_expected_at_least} - 1; offsets must increase per partition")]
    OffsetNotIncreasing {
        partition: TopicPartition,
        offset: i64,
        next_expected_at_least: i64,
    },
    #[error("the processor is closed")]
    Closed,
    #[error("dead-letter publishing failed, partitions halted: {0:?}")]
    DeadLetterFailed(BTreeMap<TopicPartition, String>),
}

/// Dedup settings: the store and where a record's id comes from.
#[derive(Clone)]
pub struct DedupConfig {
    pub store: Arc<dyn Deduplicator>,
    pub key: DedupKey,
}

/// Processing settings.
#[derive(Clone)]
pub struct ProcessorConfig {
    /// Handlers running at once, across lanes (`processing.concurrency`).
    pub concurrency: usize,
    /// Records submitted and not finished before `submit` waits (back-pressure on the
    /// consumer's poll loop; `max.in.flight.records`).
    pub max_in_flight_records: usize,
    pub retry: RetryConfig,
    pub dead_letter_topic: DeadLetterTopic,
    /// Skip records already handled; `None`: no dedup.
    pub dedup: Option<DedupConfig>,
}

/// Default of [`ProcessorConfig::concurrency`].
pub const CONCURRENCY_DEFAULT: usize = 16;
/// Default of [`ProcessorConfig::max_in_flight_records`].
pub const MAX_IN_FLIGHT_RECORDS_DEFAULT: usize = 1_000;

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            concurrency: CONCURRENCY_DEFAULT,
            max_in_flight_records: MAX_IN_FLIGHT_RECORDS_DEFAULT,
            retry: RetryConfig::default(),
            dead_letter_topic: DeadLetterTopic::default(),
            dedup: None,
        }
    }
}

/// Counters for the caller's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessorMetrics {
    /// Records whose handler succeeded.
    pub handled: u64,
    /// Attempts after a failure (a record failing twice then succeeding counts 2).
    pub retried: u64,
    /// Records published to a dead-letter topic.
    pub dead_lettered: u64,
    /// Records skipped as seen before.
    pub deduplicated: u64,
    /// Dead-letter publishes that failed (each halts its partition).
    pub dead_letter_failures: u64,
    /// Records submitted and not finished.
    pub in_flight: u64,
}

#[derive(Default)]
struct Counters {
    handled: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    deduplicated: AtomicU64,
    dead_letter_failures: AtomicU64,
}

type Handler = dyn Fn(ConsumerRecord) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync;

/// A lane: records of one partition and key, one at a time.
type LaneKey = (TopicPartition, Option<Bytes>);

struct Queued {
    record: ConsumerRecord,
    /// The `max_in_flight_records` slot, given back when the record is finished or dropped.
    _slot: OwnedSemaphorePermit,
}

#[derive(Default)]
struct PartitionState {
    tracker: OffsetTracker,
    /// Records queued or running.
    live: usize,
    revoked: bool,
    halted: Option<String>,
}

#[derive(Default)]
struct State {
    partitions: HashMap<TopicPartition, PartitionState>,
    /// A lane is in the map exactly while a task runs it.
    lanes: HashMap<LaneKey, VecDeque<Queued>>,
    /// Records queued or running, all partitions.
    live: usize,
    /// Lane tasks not known to have exited (finished ones are pruned on each spawn), for
    /// [`Processor::close`].
    lane_tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Inner {
    config: ProcessorConfig,
    handler: Arc<Handler>,
    sink: Arc<dyn DeadLetterSink>,
    state: Mutex<State>,
    handler_slots: Arc<Semaphore>,
    record_slots: Arc<Semaphore>,
    /// Bumped whenever records finish or partitions change, to wake `drain`, `revoke` and
    /// retries waiting out a backoff.
    changes: watch::Sender<u64>,
    counters: Counters,
    /// Dedup ids in flight: one record per id at a time, across lanes.
    dedup_in_flight: Arc<InFlightIds>,
}

/// How a record left its lane.
enum Outcome {
    /// Handled, dead-lettered or deduplicated: committable.
    Done,
    /// Its partition was revoked before it finished: left for the next owner.
    Abandoned,
    /// The dead-letter publish failed: the partition halts.
    Halted(String),
}

/// The processing helper; cheap to clone (clones share the processor).
#[derive(Clone)]
pub struct Processor {
    inner: Arc<Inner>,
}

impl Processor {
    /// A processor calling `handler` for each record and publishing dead letters to `sink`.
    pub fn new<F, Fut>(
        config: ProcessorConfig,
        handler: F,
        sink: Arc<dyn DeadLetterSink>,
    ) -> Processor
    where
        F: Fn(ConsumerRecord) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let handler: Arc<Handler> = Arc::new(move |record| Box::pin(handler(record)));
        let (changes, _) = watch::channel(0);
        Processor {
            inner: Arc::new(Inner {
                handler_slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
                record_slots: Arc::new(Semaphore::new(config.max_in_flight_records.max(1))),
                config,
                handler,
                sink,
                state: Mutex::new(State::default()),
                changes,
                counters: Counters::default(),
                dedup_in_flight: Arc::default(),
            }),
        }
    }

    /// Hands a record over, waiting while `max_in_flight_records` are unfinished. Records of
    /// a partition must come in increasing offset order.
    pub async fn submit(&self, record: ConsumerRecord) -> Result<(), ProcessorError> {
        let tp = record.topic_partition();
        if let Some(error) = self.inner.rejection(&self.inner.lock(), &tp) {
            return Err(error);
        }
        let slot = Arc::clone(&self.inner.record_slots)
            .acquire_owned()
            .await
            .map_err(|_| ProcessorError::Closed)?;
        let lane: LaneKey = (tp.clone(), record.key.clone());
        let start_lane = {
            let mut state = self.inner.lock();
            if let Some(error) = self.inner.rejection(&state, &tp) {
                return Err(error);
            }
            let partition = state.partitions.entry(tp.clone()).or_default();
            partition.tracker.submit(record.offset).map_err(|e| {
                ProcessorError::OffsetNotIncreasing {
                    partition: tp.clone(),
                    offset: e.offset,
                    next_expected_at_least: e.next_expected_at_least,
                }
            })?;
            partition.live += 1;
            state.live += 1;
            let queued = Queued {
                record,
                _slot: slot,
            };
            match state.lanes.get_mut(&lane) {
                Some(queue) => {
                    queue.push_back(queued);
                    false
                }
                None => {
                    state.lanes.insert(lane.clone(), VecDeque::from([queued]));
                    true
                }
            }
        };
        if start_lane {
            let inner = Arc::clone(&self.inner);
            let task = tokio::spawn(async move { inner.run_lane(lane).await });
            let mut state = self.inner.lock();
            state.lane_tasks.retain(|task| !task.is_finished());
            state.lane_tasks.push(task);
        }
        Ok(())
    }

    /// Per partition with submitted records, the offset to commit: the lowest offset not
    /// finished, or one past the last submitted when all are finished.
    pub fn committable(&self) -> BTreeMap<TopicPartition, i64> {
        let state = self.inner.lock();
        state
            .partitions
            .iter()
            .filter_map(|(tp, p)| Some((tp.clone(), p.tracker.committable()?)))
            .collect()
    }

    /// Waits until every submitted record is finished (or dropped by a halted partition).
    /// Fails when a partition is halted: its committable offset stays at the record whose
    /// dead letter could not be published.
    pub async fn drain(&self) -> Result<(), ProcessorError> {
        let mut changes = self.inner.changes.subscribe();
        loop {
            let idle = self.inner.lock().live == 0;
            if idle {
                let halted = self.halted_partitions();
                return if halted.is_empty() {
                    Ok(())
                } else {
                    Err(ProcessorError::DeadLetterFailed(halted))
                };
            }
            // The sender lives in `inner`, which `self` keeps alive.
            let _ = changes.changed().await;
        }
    }

    /// Drains, then waits until every lane task has exited, so that once the last clone
    /// of this processor is gone the handler, the sink and the dedup store are released
    /// (a `RedbDedup` file can then be opened again in this process).
    /// Submits from other clones fail with [`ProcessorError::Closed`] once it started.
    pub async fn close(self) -> Result<(), ProcessorError> {
        self.inner.record_slots.close();
        let drained = self.drain().await;
        let tasks = std::mem::take(&mut self.inner.lock().lane_tasks);
        for task in tasks {
            if let Err(error) = task.await {
                tracing::warn!(%error, "a processor lane task failed");
            }
        }
        drained
    }

    /// For a rebalance: stops starting work on `partitions` (queued records are dropped,
    /// retries are abandoned), waits for their running handlers, forgets them and returns
    /// their final committable offsets. The partitions can be submitted again afterwards
    /// (a new assignment).
    pub async fn revoke(&self, partitions: &[TopicPartition]) -> BTreeMap<TopicPartition, i64> {
        let mut changes = self.inner.changes.subscribe();
        {
            let mut state = self.inner.lock();
            let mut dropped = 0;
            for tp in partitions {
                if let Some(partition) = state.partitions.get_mut(tp) {
                    partition.revoked = true;
                }
            }
            let State {
                lanes,
                partitions: states,
                ..
            } = &mut *state;
            for ((tp, _), queue) in lanes.iter_mut() {
                if partitions.contains(tp) && !queue.is_empty() {
                    if let Some(partition) = states.get_mut(tp) {
                        partition.live -= queue.len();
                    }
                    dropped += queue.len();
                    queue.clear();
                }
            }
            state.live -= dropped;
            tracing::debug!(?partitions, dropped, "revoking partitions");
        }
        self.inner
            .changes
            .send_modify(|generation| *generation += 1);
        loop {
            {
                let mut state = self.inner.lock();
                let running = partitions
                    .iter()
                    .filter_map(|tp| state.partitions.get(tp))
                    .any(|p| p.live > 0);
                if !running {
                    return partitions
                        .iter()
                        .filter_map(|tp| {
                            let partition = state.partitions.remove(tp)?;
                            Some((tp.clone(), partition.tracker.committable()?))
                        })
                        .collect();
                }
            }
            let _ = changes.changed().await;
        }
    }

    /// Partitions halted by a failed dead-letter publish, with the reason: the consumer
    /// should pause them, then [`Processor::revoke`] them and seek back to the returned
    /// offsets (or restart) once the dead-letter topic is writable again.
    pub fn halted_partitions(&self) -> BTreeMap<TopicPartition, String> {
        self.inner
            .lock()
            .partitions
            .iter()
            .filter_map(|(tp, p)| Some((tp.clone(), p.halted.clone()?)))
            .collect()
    }

    pub fn metrics(&self) -> ProcessorMetrics {
        let c = &self.inner.counters;
        ProcessorMetrics {
            handled: c.handled.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            deduplicated: c.deduplicated.load(Ordering::Relaxed),
            dead_letter_failures: c.dead_letter_failures.load(Ordering::Relaxed),
            in_flight: self.inner.lock().live as u64,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under the lock is a few field changes that cannot panic midway; a
        // poisoned lock (a panic elsewhere) leaves consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn rejection(&self, state: &State, tp: &TopicPartition) -> Option<ProcessorError> {
        let partition = state.partitions.get(tp)?;
        if let Some(reason) = &partition.halted {
            return Some(ProcessorError::Halted {
                partition: tp.clone(),
                reason: reason.clone(),
            });
        }
        partition
            .revoked
            .then(|| ProcessorError::Revoked(tp.clone()))
    }

    fn stopped(&self, tp: &TopicPartition) -> bool {
        self.lock()
            .partitions
            .get(tp)
            .is_none_or(|p| p.revoked || p.halted.is_some())
    }

    /// Runs one lane's records in order until its queue is empty.
    async fn run_lane(self: Arc<Self>, lane: LaneKey) {
        loop {
            let next = {
                let mut state = self.lock();
                let stopped = state
                    .partitions
                    .get(&lane.0)
                    .is_none_or(|p| p.revoked || p.halted.is_some());
                let Some(queue) = state.lanes.get_mut(&lane) else {
                    return;
                };
                if stopped {
                    // Revoked or halted: drop what is queued (it stays uncommitted).
                    let dropped = queue.len();
                    state.lanes.remove(&lane);
                    state.live -= dropped;
                    if let Some(partition) = state.partitions.get_mut(&lane.0) {
                        partition.live -= dropped;
                    }
                    None
                } else {
                    match queue.pop_front() {
                        Some(queued) => Some(queued),
                        None => {
                            state.lanes.remove(&lane);
                            None
                        }
                    }
                }
            };
            let Some(queued) = next else {
                self.changes.send_modify(|generation| *generation += 1);
                return;
            };
            let offset = queued.record.offset;
            let outcome = self.process(queued.record.clone()).await;
            {
                let mut state = self.lock();
                state.live -= 1;
                if let Some(partition) = state.partitions.get_mut(&lane.0) {
                    partition.live -= 1;
                    match outcome {
                        Outcome::Done => {
                            partition.tracker.complete(offset);
                        }
                        Outcome::Abandoned => {}
                        Outcome::Halted(reason) => partition.halted = Some(reason),
                    }
                }
            }
            drop(queued);
            self.changes.send_modify(|generation| *generation += 1);
        }
    }

    /// Dedup check, handler attempts with backoff, then the dead letter.
    async fn process(&self, record: ConsumerRecord) -> Outcome {
        let tp = record.topic_partition();
        let dedup_id = self.config.dedup.as_ref().and_then(|d| {
            d.key
                .id_of(&record)
                .map(|id| (Arc::clone(&d.store), id.to_vec()))
        });
        // Held until this record is handled (and marked) or has failed for good.
        let _in_flight = match &dedup_id {
            Some((_, id)) => Some(self.dedup_in_flight.claim(id).await),
            None => None,
        };
        if let Some((store, id)) = &dedup_id {
            if self.dedup_seen(store, id, &record).await {
                self.counters.deduplicated.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(partition = %tp, offset = record.offset, "skipping a record seen before");
                return Outcome::Done;
            }
        }
        let max_attempts = self.config.retry.max_attempts.max(1);
        let mut attempt = 0;
        let error = loop {
            attempt += 1;
            if self.stopped(&tp) {
                return Outcome::Abandoned;
            }
            let result = {
                let Ok(_slot) = self.handler_slots.acquire().await else {
                    return Outcome::Abandoned;
                };
                // A task of its own, so that a panicking handler fails this record instead
                // of killing the lane.
                match tokio::spawn((self.handler)(record.clone())).await {
                    Ok(result) => result,
                    Err(join) => Err(HandlerError::new(format!("the handler panicked: {join}"))),
                }
            };
            match result {
                Ok(()) => {
                    self.counters.handled.fetch_add(1, Ordering::Relaxed);
                    if let Some((store, id)) = dedup_id {
                        self.dedup_mark(store, id, &record).await;
                    }
                    return Outcome::Done;
                }
                Err(error) if error.retriable && attempt < max_attempts => {
                    let wait = self.config.retry.backoff(attempt);
                    tracing::debug!(partition = %tp, offset = record.offset, attempt, ?wait, %error, "handler failed; retrying");
                    self.counters.retried.fetch_add(1, Ordering::Relaxed);
                    if !self.wait_unless_stopped(&tp, wait).await {
                        return Outcome::Abandoned;
                    }
                }
                Err(error) => break error,
            }
        };
        let dlq_topic = self.config.dead_letter_topic.topic_for(&record);
        let letter = dead_letter_record(
            &record,
            dlq_topic.clone(),
            attempt,
            &error.message,
            now_ms(),
        );
        match self.sink.publish(letter).await {
            Ok(metadata) => {
                self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    partition = %tp, offset = record.offset, attempts = attempt, %error,
                    dlq_topic, dlq_partition = metadata.partition, dlq_offset = metadata.offset,
                    "record dead-lettered"
                );
                Outcome::Done
            }
            Err(publish_error) => {
                self.counters
                    .dead_letter_failures
                    .fetch_add(1, Ordering::Relaxed);
                let reason = format!(
                    "dead letter of offset {} to {dlq_topic} failed: {publish_error}",
                    record.offset
                );
                tracing::error!(partition = %tp, %reason, "halting the partition");
                Outcome::Halted(reason)
            }
        }
    }

    /// Sleeps `wait`, returning false early when the record's partition is revoked.
    async fn wait_unless_stopped(&self, tp: &TopicPartition, wait: std::time::Duration) -> bool {
        let mut changes = self.changes.subscribe();
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            if self.stopped(tp) {
                return false;
            }
            tokio::select! {
                _ = &mut sleep => return true,
                _ = changes.changed() => {}
            }
        }
    }

    /// Whether the store saw `id`; a store error counts as not seen (handling twice is
    /// better than losing a record).
    async fn dedup_seen(
        &self,
        store: &Arc<dyn Deduplicator>,
        id: &[u8],
        record: &ConsumerRecord,
    ) -> bool {
        let (store, id) = (Arc::clone(store), id.to_vec());
        match tokio::task::spawn_blocking(move || store.seen(&id)).await {
            Ok(Ok(seen)) => seen,
            Ok(Err(error)) => {
                tracing::warn!(partition = %record.topic_partition(), offset = record.offset, %error, "dedup lookup failed; handling the record");
                false
            }
            Err(join) => {
                tracing::warn!(%join, "dedup lookup task failed; handling the record");
                false
            }
        }
    }

    /// Remembers a handled record's id; a failure is logged (a redelivery would be handled
    /// again, which is a duplicate, not a loss).
    async fn dedup_mark(&self, store: Arc<dyn Deduplicator>, id: Vec<u8>, record: &ConsumerRecord) {
        match tokio::task::spawn_blocking(move || store.mark(&id)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(partition = %record.topic_partition(), offset = record.offset, %error, "cannot remember a handled record for dedup")
            }
            Err(join) => tracing::warn!(%join, "dedup mark task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::ClientError;
    use crate::dedup::MemoryDedup;
    use crate::record::{Header, ProducerRecord, RecordMetadata};
    use std::sync::OnceLock;
    use tokio::sync::Notify;

    /// Keeps dead letters in memory (the broker-backed sink is in tests/processor_broker.rs).
    #[derive(Default)]
    struct CollectingSink {
        records: Mutex<Vec<ProducerRecord>>,
        fail: bool,
    }

    impl DeadLetterSink for CollectingSink {
        fn publish(
            &self,
            record: ProducerRecord,
        ) -> BoxFuture<'_, Result<RecordMetadata, ClientError>> {
            Box::pin(async move {
                if self.fail {
                    return Err(ClientError::Protocol(
                        "dead-letter topic unavailable".into(),
                    ));
                }
                let mut records = self.records.lock().unwrap();
                records.push(record);
                Ok(RecordMetadata {
                    partition: 0,
                    offset: records.len() as i64 - 1,
                    timestamp_ms: 0,
                })
            })
        }
    }

    fn record(partition: i32, offset: i64, key: Option<&str>) -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".to_string(),
            partition,
            offset,
            timestamp_ms: 0,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::from(format!("{partition}-{offset}"))),
            headers: vec![Header::new("message-id", format!("{partition}-{offset}"))],
        }
    }

    fn fast_retries(max_attempts: u32) -> RetryConfig {
        RetryConfig {
            max_attempts,
            retry_backoff_ms: 1,
            backoff_multiplier: 2.0,
            retry_backoff_max_ms: 4,
            jitter: 0.5,
        }
    }

    /// A tiny deterministic generator for test delays.
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    type Log = Arc<Mutex<Vec<(LaneKey, i64)>>>;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn per_key_order_and_the_watermark_hold_under_random_delays_and_retries() {
        for seed in 0..4u64 {
            let finished: Log = Arc::default();
            let attempts: Arc<Mutex<HashMap<(i32, i64), u32>>> = Arc::default();
            let running = Arc::new(AtomicU64::new(0));
            let max_running = Arc::new(AtomicU64::new(0));
            let violations: Arc<Mutex<Vec<String>>> = Arc::default();
            let processor_cell: Arc<OnceLock<Processor>> = Arc::default();
            let handler = {
                let (finished, attempts, running, max_running, violations, cell) = (
                    finished.clone(),
                    attempts.clone(),
                    running.clone(),
                    max_running.clone(),
                    violations.clone(),
                    processor_cell.clone(),
                );
                move |r: ConsumerRecord| {
                    let (finished, attempts, running, max_running, violations, cell) = (
                        finished.clone(),
                        attempts.clone(),
                        running.clone(),
                        max_running.clone(),
                        violations.clone(),
                        cell.clone(),
                    );
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        max_running.fetch_max(now, Ordering::SeqCst);
                        if let Some(processor) = cell.get() {
                            let committable = processor.committable();
                            if committable
                                .get(&r.topic_partition())
                                .is_some_and(|c| *c > r.offset)
                            {
                                violations.lock().unwrap().push(format!(
                                    "committable {:?} passed running {}",
                                    committable, r.offset
                                ));
                            }
                        }
                        let attempt = {
                            let mut attempts = attempts.lock().unwrap();
                            let n = attempts.entry((r.partition, r.offset)).or_insert(0);
                            *n += 1;
                            *n
                        };
                        let dice =
                            mix(seed * 1_000_003 + r.offset as u64 * 31 + r.partition as u64);
                        tokio::time::sleep(std::time::Duration::from_micros(dice % 2_000)).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        // One record in seven fails its first attempt.
                        if dice.is_multiple_of(7) && attempt == 1 {
                            return Err(HandlerError::new("transient"));
                        }
                        finished
                            .lock()
                            .unwrap()
                            .push(((r.topic_partition(), r.key.clone()), r.offset));
                        Ok(())
                    }
                }
            };
            let config = ProcessorConfig {
                concurrency: 4,
                max_in_flight_records: 50,
                retry: fast_retries(3),
                ..ProcessorConfig::default()
            };
            let sink = Arc::new(CollectingSink::default());
            let processor = Processor::new(config, handler, sink.clone());
            let _ = processor_cell.set(processor.clone());
            let mut next_offset = [0i64; 3];
            let mut previous_committable: BTreeMap<TopicPartition, i64> = BTreeMap::new();
            for i in 0..400u64 {
                let dice = mix(seed ^ (i << 20));
                let partition = (dice % 3) as usize;
                let key = match (dice >> 8) % 9 {
                    8 => None,
                    k => Some(format!("k{k}")),
                };
                // Gaps in offsets, as after compaction.
                next_offset[partition] += 1 + ((dice >> 16) % 2) as i64;
                processor
                    .submit(record(
                        partition as i32,
                        next_offset[partition],
                        key.as_deref(),
                    ))
                    .await
                    .unwrap();
                let committable = processor.committable();
                for (tp, offset) in &committable {
                    if let Some(previous) = previous_committable.get(tp) {
                        assert!(offset >= previous, "committable went back");
                    }
                }
                previous_committable = committable;
            }
            processor.drain().await.unwrap();
            assert!(
                violations.lock().unwrap().is_empty(),
                "{:?}",
                violations.lock().unwrap()
            );
            assert!(max_running.load(Ordering::SeqCst) <= 4);
            let finished = finished.lock().unwrap();
            assert_eq!(finished.len(), 400, "every record handled once");
            let mut last_per_lane: HashMap<&LaneKey, i64> = HashMap::new();
            for (lane, offset) in finished.iter() {
                if let Some(previous) = last_per_lane.insert(lane, *offset) {
                    assert!(
                        previous < *offset,
                        "lane {lane:?}: {offset} after {previous}"
                    );
                }
            }
            let committable = processor.committable();
            for (partition, last) in next_offset.iter().enumerate() {
                assert_eq!(
                    committable[&TopicPartition::new("t", partition as i32)],
                    last + 1
                );
            }
            let metrics = processor.metrics();
            assert_eq!(metrics.handled, 400);
            assert!(metrics.retried > 0);
            assert_eq!((metrics.dead_lettered, metrics.in_flight), (0, 0));
            assert!(sink.records.lock().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn records_failing_every_attempt_are_dead_lettered_and_committed() {
        let calls: Arc<Mutex<Vec<i64>>> = Arc::default();
        let handler = {
            let calls = calls.clone();
            move |r: ConsumerRecord| {
                calls.lock().unwrap().push(r.offset);
                async move {
                    match r.key.as_deref() {
                        Some(b"bad") => {
                            Err(HandlerError::new(format!("cannot handle {}", r.offset)))
                        }
                        Some(b"poison") => Err(HandlerError::permanent("unparseable")),
                        _ => Ok(()),
                    }
                }
            }
        };
        let sink = Arc::new(CollectingSink::default());
        let config = ProcessorConfig {
            retry: fast_retries(3),
            ..ProcessorConfig::default()
        };
        let processor = Processor::new(config, handler, sink.clone());
        for (offset, key) in ["ok", "bad", "ok", "poison", "bad"].iter().enumerate() {
            processor
                .submit(record(0, offset as i64, Some(key)))
                .await
                .unwrap();
        }
        processor.drain().await.unwrap();
        let mut calls = calls.lock().unwrap().clone();
        calls.sort();
        assert_eq!(
            calls,
            vec![0, 1, 1, 1, 2, 3, 4, 4, 4],
            "3 attempts, 1 for a permanent error"
        );
        let letters = sink.records.lock().unwrap();
        let infos: Vec<DeadLetterInfo> = letters
            .iter()
            .map(|l| DeadLetterInfo::from_headers(&l.headers).unwrap())
            .collect();
        let mut summary: Vec<(i64, u32, String)> = infos
            .iter()
            .map(|i| (i.offset, i.attempts, i.error.clone()))
            .collect();
        summary.sort();
        assert_eq!(
            summary,
            vec![
                (1, 3, "cannot handle 1".to_string()),
                (3, 1, "unparseable".to_string()),
                (4, 3, "cannot handle 4".to_string()),
            ]
        );
        assert!(letters
            .iter()
            .all(|l| l.topic == "t.dlq" && l.headers[0].key == "message-id"));
        assert_eq!(processor.committable()[&TopicPartition::new("t", 0)], 5);
        let metrics = processor.metrics();
        assert_eq!(
            (metrics.handled, metrics.dead_lettered, metrics.retried),
            (2, 3, 4)
        );
    }

    #[tokio::test]
    async fn a_failed_dead_letter_halts_the_partition_until_revoked() {
        let handler = |r: ConsumerRecord| async move {
            if r.offset == 1 {
                Err(HandlerError::permanent("bad record"))
            } else {
                Ok(())
            }
        };
        let sink = Arc::new(CollectingSink {
            fail: true,
            ..CollectingSink::default()
        });
        let processor = Processor::new(ProcessorConfig::default(), handler, sink);
        for offset in 0..3 {
            processor
                .submit(record(0, offset, Some("k")))
                .await
                .unwrap();
        }
        processor.submit(record(1, 0, Some("k"))).await.unwrap();
        let error = processor.drain().await.unwrap_err();
        assert!(
            matches!(&error, ProcessorError::DeadLetterFailed(h) if h.contains_key(&TopicPartition::new("t", 0)))
        );
        let committable = processor.committable();
        assert_eq!(
            committable[&TopicPartition::new("t", 0)],
            1,
            "stays at the unparked record"
        );
        assert_eq!(
            committable[&TopicPartition::new("t", 1)],
            1,
            "other partitions move on"
        );
        assert!(matches!(
            processor.submit(record(0, 3, Some("k"))).await,
            Err(ProcessorError::Halted { .. })
        ));
        assert_eq!(processor.metrics().dead_letter_failures, 1);
        let halted = processor.halted_partitions();
        assert_eq!(
            halted.keys().collect::<Vec<_>>(),
            [&TopicPartition::new("t", 0)]
        );
        assert!(halted[&TopicPartition::new("t", 0)].contains("dead-letter topic unavailable"));
        let revoked = processor.revoke(&[TopicPartition::new("t", 0)]).await;
        assert_eq!(revoked[&TopicPartition::new("t", 0)], 1);
        // Reassigned: the consumer seeks back to 1 and submits again.
        processor.submit(record(0, 2, Some("k"))).await.unwrap();
        processor.drain().await.unwrap();
        assert_eq!(processor.committable()[&TopicPartition::new("t", 0)], 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revoke_waits_for_running_records_and_drops_queued_ones() {
        let started = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let handled: Arc<Mutex<Vec<i64>>> = Arc::default();
        let handler = {
            let (started, release, handled) = (started.clone(), release.clone(), handled.clone());
            move |r: ConsumerRecord| {
                let (started, release, handled) =
                    (started.clone(), release.clone(), handled.clone());
                async move {
                    if (r.partition, r.offset) == (0, 10) {
                        started.notify_one();
                        release.notified().await;
                    }
                    handled.lock().unwrap().push(r.offset);
                    Ok(())
                }
            }
        };
        let processor = Processor::new(
            ProcessorConfig::default(),
            handler,
            Arc::new(CollectingSink::default()),
        );
        for offset in 10..13 {
            processor
                .submit(record(0, offset, Some("k")))
                .await
                .unwrap();
        }
        processor.submit(record(1, 0, None)).await.unwrap();
        started.notified().await;
        let revoking = tokio::spawn({
            let processor = processor.clone();
            async move { processor.revoke(&[TopicPartition::new("t", 0)]).await }
        });
        // An offset below those submitted is rejected as not increasing until the
        // revocation marked the partition, then as revoked (nothing gets queued either way).
        loop {
            match processor.submit(record(0, 5, Some("other"))).await {
                Err(ProcessorError::Revoked(_)) => break,
                Err(ProcessorError::OffsetNotIncreasing { .. }) => tokio::task::yield_now().await,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            !revoking.is_finished(),
            "the running record holds the revocation"
        );
        release.notify_one();
        let revoked = revoking.await.unwrap();
        assert_eq!(revoked, BTreeMap::from([(TopicPartition::new("t", 0), 11)]));
        processor.drain().await.unwrap();
        assert_eq!(
            processor.committable().get(&TopicPartition::new("t", 0)),
            None
        );
        let mut handled = handled.lock().unwrap().clone();
        handled.sort();
        assert_eq!(
            handled,
            vec![0, 10],
            "queued records of the revoked partition were not started"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submit_waits_while_max_in_flight_records_are_unfinished() {
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let handler = {
            let release = release.clone();
            move |_r: ConsumerRecord| {
                let release = release.clone();
                async move {
                    release.acquire().await.unwrap().forget();
                    Ok(())
                }
            }
        };
        let config = ProcessorConfig {
            max_in_flight_records: 2,
            ..ProcessorConfig::default()
        };
        let processor = Processor::new(config, handler, Arc::new(CollectingSink::default()));
        processor.submit(record(0, 0, Some("a"))).await.unwrap();
        processor.submit(record(0, 1, Some("b"))).await.unwrap();
        let third = tokio::spawn({
            let processor = processor.clone();
            async move { processor.submit(record(0, 2, Some("c"))).await }
        });
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(
            !third.is_finished(),
            "two records unfinished: the third waits"
        );
        assert_eq!(processor.metrics().in_flight, 2);
        release.add_permits(3);
        third.await.unwrap().unwrap();
        processor.drain().await.unwrap();
        assert_eq!(processor.committable()[&TopicPartition::new("t", 0)], 3);
    }

    #[tokio::test]
    async fn dedup_skips_seen_records_and_marks_only_handled_ones() {
        let store = Arc::new(MemoryDedup::new(100));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let handled: Arc<Mutex<Vec<i64>>> = Arc::default();
        let handler = {
            let (fail, handled) = (fail.clone(), handled.clone());
            move |r: ConsumerRecord| {
                let (fail, handled) = (fail.clone(), handled.clone());
                async move {
                    if r.key.as_deref() == Some(b"flaky") && fail.load(Ordering::SeqCst) {
                        return Err(HandlerError::permanent("down"));
                    }
                    handled.lock().unwrap().push(r.offset);
                    Ok(())
                }
            }
        };
        let config = ProcessorConfig {
            dedup: Some(DedupConfig {
                store: store.clone(),
                key: DedupKey::Header("message-id".to_string()),
            }),
            ..ProcessorConfig::default()
        };
        let processor = Processor::new(config, handler, Arc::new(CollectingSink::default()));
        let mut ok = record(0, 0, Some("a"));
        let mut flaky = record(0, 1, Some("flaky"));
        ok.headers = vec![Header::new("message-id", "m-ok")];
        flaky.headers = vec![Header::new("message-id", "m-flaky")];
        processor.submit(ok.clone()).await.unwrap();
        processor.submit(flaky.clone()).await.unwrap();
        processor.drain().await.unwrap();
        assert!(store.seen(b"m-ok").unwrap());
        assert!(
            !store.seen(b"m-flaky").unwrap(),
            "a failed record is not marked"
        );
        // Redelivered later in the log.
        fail.store(false, Ordering::SeqCst);
        ok.offset = 2;
        flaky.offset = 3;
        processor.submit(ok).await.unwrap();
        processor.submit(flaky).await.unwrap();
        let mut no_id = record(0, 4, Some("a"));
        no_id.headers.clear();
        processor.submit(no_id).await.unwrap();
        processor.drain().await.unwrap();
        let mut handled = handled.lock().unwrap().clone();
        handled.sort();
        assert_eq!(
            handled,
            vec![0, 3, 4],
            "the duplicate of offset 0 was skipped"
        );
        let metrics = processor.metrics();
        assert_eq!(
            (metrics.deduplicated, metrics.handled, metrics.dead_lettered),
            (1, 3, 1)
        );
        assert_eq!(processor.committable()[&TopicPartition::new("t", 0)], 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_dedup_id_on_two_keys_at_once_is_handled_once() {
        let store = Arc::new(MemoryDedup::new(100));
        let handled = Arc::new(AtomicU64::new(0));
        let handler = {
            let handled = handled.clone();
            move |_r: ConsumerRecord| {
                let handled = handled.clone();
                async move {
                    // Slow enough that the two lanes overlap.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    handled.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        };
        let config = ProcessorConfig {
            dedup: Some(DedupConfig {
                store: store.clone(),
                key: DedupKey::Header("message-id".to_string()),
            }),
            concurrency: 4,
            ..ProcessorConfig::default()
        };
        let processor = Processor::new(config, handler, Arc::new(CollectingSink::default()));
        let mut first = record(0, 0, Some("a"));
        let mut second = record(0, 1, Some("b"));
        first.headers = vec![Header::new("message-id", "m-same")];
        second.headers = vec![Header::new("message-id", "m-same")];
        processor.submit(first).await.unwrap();
        processor.submit(second).await.unwrap();
        processor.drain().await.unwrap();
        assert_eq!(handled.load(Ordering::SeqCst), 1);
        let metrics = processor.metrics();
        assert_eq!((metrics.handled, metrics.deduplicated), (1, 1));
        assert_eq!(processor.committable()[&TopicPartition::new("t", 0)], 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_releases_the_dedup_store_and_the_sink() {
        let store = Arc::new(MemoryDedup::new(10));
        let sink = Arc::new(CollectingSink::default());
        let config = ProcessorConfig {
            dedup: Some(DedupConfig {
                store: store.clone(),
                key: DedupKey::RecordKey,
            }),
            ..ProcessorConfig::default()
        };
        let processor = Processor::new(config, |_r| async { Ok(()) }, sink.clone());
        for offset in 0..20 {
            let key = format!("k{}", offset % 5);
            processor
                .submit(record(0, offset, Some(&key)))
                .await
                .unwrap();
        }
        let other = processor.clone();
        processor.close().await.unwrap();
        assert_eq!(
            other.submit(record(0, 20, None)).await,
            Err(ProcessorError::Closed)
        );
        drop(other);
        assert_eq!(Arc::strong_count(&store), 1);
        assert_eq!(Arc::strong_count(&sink), 1);
        assert_eq!(store.len(), 5);
    }

    #[tokio::test]
    async fn submitting_an_offset_twice_is_rejected_and_a_panicking_handler_fails_the_record() {
        let handler = |r: ConsumerRecord| async move {
            if r.offset == 1 {
                panic!("handler bug");
            }
            Ok(())
        };
        let sink = Arc::new(CollectingSink::default());
        let config = ProcessorConfig {
            retry: fast_retries(2),
            ..ProcessorConfig::default()
        };
        let processor = Processor::new(config, handler, sink.clone());
        processor.submit(record(0, 0, None)).await.unwrap();
        processor.submit(record(0, 1, None)).await.unwrap();
        assert!(matches!(
            processor.submit(record(0, 1, None)).await,
            Err(ProcessorError::OffsetNotIncreasing {
                offset: 1,
                next_expected_at_least: 2,
                ..
            })
        ));
        processor.drain().await.unwrap();
        let letters = sink.records.lock().unwrap();
        assert_eq!(letters.len(), 1);
        let info = DeadLetterInfo::from_headers(&letters[0].headers).unwrap();
        assert_eq!((info.offset, info.attempts), (1, 2));
        assert!(info.error.contains("panicked"), "{}", info.error);
    }
}
