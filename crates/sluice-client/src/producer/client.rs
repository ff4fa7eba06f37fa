//! [`Producer`]: the SDK's Kafka producer.
//!
//! `send` partitions a record (explicit partition, murmur2 of the key, or sticky), appends
//! it to its partition's open batch and returns a [`DeliveryFuture`]. One drain task sends
//! batches that are full, lingered, flushed or due for retry: per leader it builds ONE
//! Produce request (at most one batch per partition) and hands it to that broker's sender
//! task, which writes requests in order on a [`PipelinedConnection`] (up to
//! `max_in_flight_per_connection` outstanding) and spawns a task per response.
//!
//! Idempotence (the default) follows the Java producer:
//! - InitProducerId (v0-5 as the broker offers) gives the producer id and epoch; each
//!   partition's batches get consecutive base sequences when first sent, and keep them on
//!   retries, so the broker drops a retried batch it already has.
//! - A request whose outcome is unknown (timeout, lost connection) is retried with the same
//!   sequences; the connection is closed first, as its answers can no longer be matched.
//! - `DUPLICATE_SEQUENCE_NUMBER` counts as success (offset -1 if the broker gives none).
//! - `OUT_OF_ORDER_SEQUENCE_NUMBER` is retried; while an earlier batch of the partition is
//!   unresolved it is retried as is (the gap fills when the earlier one lands); with no
//!   earlier batch there is a real gap, so the epoch is bumped (InitProducerId with the
//!   current id and epoch, v3+; a new id otherwise) and the batch is re-sent with a new
//!   sequence.
//! - `UNKNOWN_PRODUCER_ID` and `INVALID_PRODUCER_EPOCH`: the broker lost or fenced our
//!   state; the epoch is bumped and the batch re-sent (the broker refused it, so this
//!   cannot duplicate).
//! - A batch that fails for good (e.g. `MESSAGE_TOO_LARGE`) or expires after it got a
//!   sequence leaves a gap, so the epoch is bumped too. A bump waits until no batch is in
//!   flight and no batch with an old sequence is queued (those resolve first), then every
//!   partition restarts at sequence 0.
//! - `MESSAGE_TOO_LARGE` (code 10, Java's `RecordTooLargeException`) for a batch of several
//!   records splits it into one-record batches, as the Java producer does, so only the
//!   oversized record fails.
//!
//! Delivery callbacks run on the producer's tasks: keep them short.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, ProduceRequest, ProduceResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
use kafka_protocol::ResponseError;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use super::options::ProducerOptions;
use super::PRODUCE_VERSIONS;
use crate::admin::error_name;
use crate::connection::{ClientError, Connection};
use crate::partitioner::{partition_for_key, StickyRandom};
use crate::pipeline::{PendingResponse, PipelinedConnection};
use crate::record::{Header, ProducerRecord, RecordMetadata, TopicPartition};

/// Bytes of a RecordBatch v2 header: added to the first record's size.
const BATCH_OVERHEAD_BYTES: usize = 61;
/// A generous upper bound of one record's framing (length, attributes, deltas, counts).
const RECORD_OVERHEAD_BYTES: usize = 21;

const NONE: i16 = 0;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;
const MESSAGE_TOO_LARGE: i16 = 10;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const UNKNOWN_PRODUCER_ID: i16 = 59;
const KAFKA_STORAGE_ERROR: i16 = 56;
const FENCED_LEADER_EPOCH: i16 = 74;
const UNKNOWN_LEADER_EPOCH: i16 = 75;

/// A [`ClientError::Kafka`] for `code`.
pub fn kafka_error(operation: impl Into<String>, code: i16) -> ClientError {
    ClientError::Kafka {
        operation: operation.into(),
        code,
        name: error_name(code),
        message: None,
    }
}

/// One error for each record of a failed batch (`ClientError` holds `io::Error`, which
/// does not clone).
fn copy_error(error: &ClientError) -> ClientError {
    match error {
        ClientError::Connect { address, source } => ClientError::Connect {
            address: address.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        ClientError::Io { address, source } => ClientError::Io {
            address: address.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        ClientError::Timeout(after, what) => ClientError::Timeout(*after, what.clone()),
        ClientError::UnsupportedApi { api, min, max } => ClientError::UnsupportedApi {
            api: *api,
            min: *min,
            max: *max,
        },
        ClientError::Protocol(message) => ClientError::Protocol(message.clone()),
        ClientError::Kafka {
            operation,
            code,
            name,
            message,
        } => ClientError::Kafka {
            operation: operation.clone(),
            code: *code,
            name: name.clone(),
            message: message.clone(),
        },
        ClientError::ProducerClosed => ClientError::ProducerClosed,
        #[allow(unreachable_patterns)]
        other => ClientError::Protocol(other.to_string()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Resolves to where the record landed, or why it could not be delivered.
pub struct DeliveryFuture {
    receiver: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver).poll(cx).map(|result| {
            result.unwrap_or_else(|_| {
                Err(ClientError::Protocol(
                    "the producer dropped the record without an outcome".to_string(),
                ))
            })
        })
    }
}

type Callback = Box<dyn FnOnce(Result<RecordMetadata, ClientError>) + Send + 'static>;

enum Reply {
    Future(oneshot::Sender<Result<RecordMetadata, ClientError>>),
    Callback(Callback),
}

impl Reply {
    fn complete(self, result: Result<RecordMetadata, ClientError>) {
        match self {
            Reply::Future(sender) => {
                let _ = sender.send(result);
            }
            Reply::Callback(callback) => callback(result),
        }
    }
}

struct PendingRecord {
    timestamp_ms: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<Header>,
    size_bytes: usize,
    reply: Reply,
}

/// The producer id and epoch a batch's sequence belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProducerIdentity {
    id: i64,
    epoch: i16,
}

struct Batch {
    /// Creation order within the producer (`sub` orders the parts of a split batch).
    id: u64,
    sub: u32,
    tp: TopicPartition,
    records: Vec<PendingRecord>,
    size_bytes: usize,
    created: Instant,
    /// No more appends: full, sent once, or split.
    closed: bool,
    /// Sends so far that failed with a retriable error.
    attempts: u32,
    retry_at: Option<Instant>,
    /// Producer identity and base sequence, once first sent with idempotence.
    sequence: Option<(ProducerIdentity, i32)>,
    last_error: Option<String>,
    /// Buffer memory held until the batch completes.
    permit: Option<OwnedSemaphorePermit>,
}

impl Batch {
    fn order_key(&self) -> (bool, i32, u64, u32) {
        (
            self.sequence.is_none(),
            self.sequence.map(|(_, s)| s).unwrap_or(0),
            self.id,
            self.sub,
        )
    }

    fn record_count(&self) -> i32 {
        i32::try_from(self.records.len()).unwrap_or(i32::MAX)
    }

    /// Encodes the batch as RecordBatch v2.
    fn encode(&self, options: &ProducerOptions) -> Result<Bytes, ClientError> {
        let (producer_id, producer_epoch, base_sequence) = match self.sequence {
            Some((identity, base)) => (identity.id, identity.epoch, base),
            // offset - sequence must be constant; the base sequence is -1 without an id.
            None => (-1, -1, -1),
        };
        let records: Vec<Record> = self
            .records
            .iter()
            .enumerate()
            .map(|(index, record)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id,
                producer_epoch,
                timestamp_type: TimestampType::Creation,
                offset: index as i64,
                sequence: base_sequence.wrapping_add(index as i32),
                timestamp: record.timestamp_ms,
                key: record.key.clone(),
                value: record.value.clone(),
                headers: record
                    .headers
                    .iter()
                    .map(|h| (StrBytes::from_string(h.key.clone()), h.value.clone()))
                    .collect::<IndexMap<_, _>>(),
            })
            .collect();
        let mut buffer = BytesMut::with_capacity(self.size_bytes + BATCH_OVERHEAD_BYTES);
        let encode_options = RecordEncodeOptions {
            version: 2,
            compression: options.compression,
        };
        RecordBatchEncoder::encode(&mut buffer, records.iter(), &encode_options)
            .map_err(|e| ClientError::Protocol(format!("encoding a record batch: {e}")))?;
        Ok(buffer.freeze())
    }
}

#[derive(Default)]
struct PartitionState {
    queue: VecDeque<Batch>,
    /// Batches sent and not resolved: id -> base sequence (if any) and the broker sent to.
    in_flight: BTreeMap<(u64, u32), InFlight>,
    next_sequence: i32,
}

/// A batch sent and not resolved.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    sequence: Option<i32>,
    leader: i32,
}

impl PartitionState {
    /// Puts a batch back in order: retried batches before newer ones, by sequence.
    fn requeue(&mut self, batch: Batch) {
        let key = batch.order_key();
        let position = self
            .queue
            .iter()
            .position(|b| b.order_key() > key)
            .unwrap_or(self.queue.len());
        self.queue.insert(position, batch);
    }

    /// Whether a batch with a sequence below `sequence` is still unresolved.
    fn has_earlier(&self, sequence: i32) -> bool {
        self.in_flight
            .values()
            .any(|f| matches!(f.sequence, Some(s) if s < sequence))
            || self
                .queue
                .iter()
                .any(|b| matches!(b.sequence, Some((_, s)) if s < sequence))
    }
}

#[derive(Default)]
struct Metadata {
    brokers: HashMap<i32, String>,
    /// Topic -> partition -> leader node (None while it has no leader).
    topics: HashMap<String, BTreeMap<i32, Option<i32>>>,
    stale: bool,
    refreshed: Option<Instant>,
}

#[derive(Default)]
struct State {
    metadata: Metadata,
    partitions: BTreeMap<TopicPartition, PartitionState>,
    /// Topic -> (sticky partition, id of its open batch) for keyless records.
    sticky: HashMap<String, (i32, u64)>,
    identity: Option<ProducerIdentity>,
    /// A sequence gap exists: bump the epoch once nothing old is unresolved.
    bump_pending: bool,
    next_batch_id: u64,
    /// Batches not yet completed, for `flush`.
    incomplete: std::collections::BTreeSet<u64>,
    /// Batches with an id below this are sent without lingering.
    flush_below: u64,
}

/// What became of one sent batch.
enum Outcome {
    Success {
        base_offset: i64,
        log_append_ms: i64,
    },
    /// Retry later; `keep_sequence` is false when the broker refused the batch outright
    /// and its sequence must be assigned anew after an epoch bump.
    Retry {
        error: ClientError,
        refresh_metadata: bool,
        keep_sequence: bool,
        bump: bool,
    },
    Split(ClientError),
    Fail(ClientError),
}

struct Inner {
    options: ProducerOptions,
    bootstrap: Vec<String>,
    state: Mutex<State>,
    /// Wakes the drain task: a batch to send, a response handled, close.
    wake: Notify,
    /// Signalled whenever a batch completes, for `flush`.
    completed: Notify,
    buffer: Arc<Semaphore>,
    closed: AtomicBool,
    /// The connection used for Metadata and InitProducerId.
    control: tokio::sync::Mutex<Option<Connection>>,
    random: Mutex<StickyRandom>,
}

/// A Kafka producer: cheap to clone (all clones share one set of connections and
/// buffers), usable from many tasks at once.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
    drain: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    _last_clone: Arc<LastClone>,
}

/// Dropped with the last [`Producer`] clone: the background tasks hold the shared state,
/// so without `close()` they would run forever. This closes the producer instead; queued
/// records are still sent (their futures and callbacks still resolve), then the tasks end.
struct LastClone {
    inner: Arc<Inner>,
}

impl Drop for LastClone {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.wake.notify_one();
    }
}

impl Producer {
    /// Connects to one of the comma-separated `bootstrap` addresses (checking that a broker
    /// answers) and starts the background tasks.
    pub async fn connect(
        bootstrap: &str,
        options: ProducerOptions,
    ) -> Result<Producer, ClientError> {
        if options.enable_idempotence && options.acks != -1 {
            tracing::warn!(
                acks = options.acks,
                "idempotence needs acks=all; producing without it"
            );
        }
        if options.idempotent() && options.max_in_flight_per_connection > 5 {
            // Brokers remember the last 5 batches per producer and partition: more in
            // flight could make a retried batch look out of order instead of duplicate.
            return Err(ClientError::Protocol(format!(
                "max_in_flight_per_connection is {} but must be at most 5 with idempotence",
                options.max_in_flight_per_connection
            )));
        }
        let bootstrap: Vec<String> = bootstrap
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if bootstrap.is_empty() {
            return Err(ClientError::Protocol("no bootstrap address".to_string()));
        }
        let buffer_permits = options.buffer_memory_bytes.clamp(1, Semaphore::MAX_PERMITS);
        let inner = Arc::new(Inner {
            bootstrap,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            completed: Notify::new(),
            buffer: Arc::new(Semaphore::new(buffer_permits)),
            closed: AtomicBool::new(false),
            control: tokio::sync::Mutex::new(None),
            random: Mutex::new(StickyRandom::new()),
            options,
        });
        // Fails early when no broker answers.
        inner.refresh_metadata(Vec::new()).await?;
        let drain = tokio::spawn(drain_loop(Arc::clone(&inner)));
        tracing::debug!(client_id = %inner.options.client_id, "producer started");
        Ok(Producer {
            _last_clone: Arc::new(LastClone {
                inner: Arc::clone(&inner),
            }),
            inner,
            drain: Arc::new(tokio::sync::Mutex::new(Some(drain))),
        })
    }

    pub fn options(&self) -> &ProducerOptions {
        &self.inner.options
    }

    /// Accepts `record` into its partition's batch (waiting for the topic's metadata and
    /// for buffer memory, each at most `max_block_ms`) and returns a future of its
    /// delivery.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let (sender, receiver) = oneshot::channel();
        self.inner.append(record, Reply::Future(sender)).await?;
        Ok(DeliveryFuture { receiver })
    }

    /// Like [`Producer::send`], but calls `callback` with the outcome instead (on a
    /// producer task: keep it short). An error returned here means the record was not
    /// accepted and the callback will not be called.
    pub async fn send_with_callback<F>(
        &self,
        record: ProducerRecord,
        callback: F,
    ) -> Result<(), ClientError>
    where
        F: FnOnce(Result<RecordMetadata, ClientError>) + Send + 'static,
    {
        self.inner
            .append(record, Reply::Callback(Box::new(callback)))
            .await
    }

    /// The partition count of `topic` (fetching its metadata, creating it if the broker
    /// auto-creates topics).
    pub async fn partition_count(&self, topic: &str) -> Result<i32, ClientError> {
        self.inner
            .partition_count(topic, Instant::now() + self.inner.options.max_block())
            .await
    }

    /// Sends every batch now and waits until every record accepted before the call is
    /// acknowledged or failed.
    pub async fn flush(&self) {
        let target = {
            let mut state = self.inner.lock();
            state.flush_below = state.flush_below.max(state.next_batch_id);
            state.next_batch_id
        };
        self.inner.wake.notify_one();
        loop {
            let completed = self.inner.completed.notified();
            tokio::pin!(completed);
            completed.as_mut().enable();
            {
                let state = self.inner.lock();
                match state.incomplete.first() {
                    Some(first) if *first < target => {}
                    _ => return,
                }
            }
            completed.await;
        }
    }

    /// Flushes, then stops the background tasks. Later sends fail with
    /// [`ClientError::ProducerClosed`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.flush().await;
        self.inner.wake.notify_one();
        let handle = self.drain.lock().await.take();
        if let Some(handle) = handle {
            if let Err(error) = handle.await {
                tracing::warn!(%error, "producer drain task ended abnormally");
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough data: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    async fn partition_count(&self, topic: &str, deadline: Instant) -> Result<i32, ClientError> {
        loop {
            {
                let state = self.lock();
                if let Some(partitions) = state.metadata.topics.get(topic) {
                    if !partitions.is_empty() {
                        return Ok(i32::try_from(partitions.len()).unwrap_or(i32::MAX));
                    }
                }
            }
            let refreshed = self.refresh_metadata(vec![topic.to_string()]).await;
            let known = self
                .lock()
                .metadata
                .topics
                .get(topic)
                .is_some_and(|p| !p.is_empty());
            if known {
                continue;
            }
            if Instant::now() >= deadline {
                let why = match refreshed {
                    Err(error) => format!(" (last error: {error})"),
                    Ok(()) => String::new(),
                };
                return Err(ClientError::Timeout(
                    self.options.max_block(),
                    format!("topic {topic} to appear in metadata{why}"),
                ));
            }
            tokio::time::sleep(self.options.backoff(1)).await;
        }
    }

    async fn append(&self, record: ProducerRecord, reply: Reply) -> Result<(), ClientError> {
        if self.is_closed() {
            return Err(ClientError::ProducerClosed);
        }
        let size_bytes = RECORD_OVERHEAD_BYTES
            + record.key.as_ref().map_or(0, |k| k.len())
            + record.value.as_ref().map_or(0, |v| v.len())
            + record
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()) + 10)
                .sum::<usize>();
        let limit = self
            .options
            .max_request_bytes
            .min(self.options.buffer_memory_bytes);
        if size_bytes + BATCH_OVERHEAD_BYTES > limit {
            return Err(kafka_error(
                format!(
                    "a record of {size_bytes} bytes is larger than max_request_bytes or \
                     buffer_memory_bytes ({limit})"
                ),
                MESSAGE_TOO_LARGE,
            ));
        }
        let deadline = Instant::now() + self.options.max_block();
        let count = self.partition_count(&record.topic, deadline).await?;
        let keyed_partition = match (record.partition, &record.key) {
            (Some(partition), _) => {
                if !(0..count).contains(&partition) {
                    return Err(kafka_error(
                        format!(
                            "partition {partition} of {} ({count} partitions)",
                            record.topic
                        ),
                        UNKNOWN_TOPIC_OR_PARTITION,
                    ));
                }
                Some(partition)
            }
            (None, Some(key)) => Some(partition_for_key(key, count)),
            (None, None) => None,
        };
        let permits = u32::try_from(size_bytes).unwrap_or(u32::MAX);
        let permit = tokio::time::timeout_at(
            deadline.into(),
            Arc::clone(&self.buffer).acquire_many_owned(permits),
        )
        .await
        .map_err(|_| {
            ClientError::Timeout(
                self.options.max_block(),
                "buffer memory (buffer_memory_bytes is used up by unacknowledged records)"
                    .to_string(),
            )
        })?
        .map_err(|_| ClientError::ProducerClosed)?;
        let pending = PendingRecord {
            timestamp_ms: record.timestamp_ms.unwrap_or_else(now_ms),
            key: record.key,
            value: record.value,
            headers: record.headers,
            size_bytes,
            reply,
        };
        let wake = {
            let mut state = self.lock();
            // Checked under the lock: close() cannot finish while this batch is queued.
            if self.is_closed() {
                return Err(ClientError::ProducerClosed);
            }
            let partition = match keyed_partition {
                Some(partition) => partition,
                None => self.sticky_partition(&mut state, &record.topic, count),
            };
            let tp = TopicPartition::new(record.topic.clone(), partition);
            let batch_size_bytes = self.options.batch_size_bytes;
            let next_id = state.next_batch_id;
            let partition_state = state.partitions.entry(tp.clone()).or_default();
            let open = partition_state
                .queue
                .back_mut()
                .filter(|b| !b.closed && b.size_bytes + pending.size_bytes <= batch_size_bytes);
            let (batch_id, new_batch, full) = match open {
                Some(batch) => {
                    batch.size_bytes += pending.size_bytes;
                    batch.records.push(pending);
                    if let Some(held) = batch.permit.as_mut() {
                        held.merge(permit);
                    }
                    (batch.id, false, batch.size_bytes >= batch_size_bytes)
                }
                None => {
                    let size = pending.size_bytes;
                    partition_state.queue.push_back(Batch {
                        id: next_id,
                        sub: 0,
                        tp,
                        records: vec![pending],
                        size_bytes: size,
                        created: Instant::now(),
                        closed: false,
                        attempts: 0,
                        retry_at: None,
                        sequence: None,
                        last_error: None,
                        permit: Some(permit),
                    });
                    (next_id, true, size >= batch_size_bytes)
                }
            };
            if new_batch {
                state.next_batch_id += 1;
                state.incomplete.insert(batch_id);
            }
            if keyed_partition.is_none() {
                state.sticky.insert(record.topic, (partition, batch_id));
            }
            new_batch || full
        };
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// KIP-480: keyless records stay on one partition while its batch is open; once that
    /// batch is closed (full or sent) the next keyless record picks another partition.
    fn sticky_partition(&self, state: &mut State, topic: &str, count: i32) -> i32 {
        if let Some((partition, batch_id)) = state.sticky.get(topic).copied() {
            let still_open = state
                .partitions
                .get(&TopicPartition::new(topic, partition))
                .and_then(|p| p.queue.back())
                .is_some_and(|b| b.id == batch_id && !b.closed);
            if still_open && partition < count {
                return partition;
            }
            let mut random = self.random.lock().unwrap_or_else(|e| e.into_inner());
            return random.next_partition(count, Some(partition));
        }
        let mut random = self.random.lock().unwrap_or_else(|e| e.into_inner());
        random.next_partition(count, None)
    }

    /// Fetches metadata for `topics` (asking the broker to auto-create them, like the Java
    /// client) and merges it into the cache. An empty list fetches brokers only.
    async fn refresh_metadata(&self, topics: Vec<String>) -> Result<(), ClientError> {
        let mut control = self.control.lock().await;
        let result = self.refresh_metadata_on(&mut control, &topics).await;
        if result.is_err() {
            // Reconnect next time, maybe to another address.
            *control = None;
        }
        let mut state = self.lock();
        state.metadata.refreshed = Some(Instant::now());
        if result.is_ok() {
            state.metadata.stale = false;
        }
        result
    }

    async fn control_connection<'a>(
        &self,
        control: &'a mut Option<Connection>,
    ) -> Result<&'a mut Connection, ClientError> {
        if control.is_none() {
            let mut addresses = self.bootstrap.clone();
            addresses.extend(self.lock().metadata.brokers.values().cloned());
            let mut last_error = None;
            for address in addresses {
                match Connection::connect_as(
                    &address,
                    self.options.request_timeout(),
                    &self.options.client_id,
                )
                .await
                {
                    Ok(connection) => {
                        *control = Some(connection);
                        break;
                    }
                    Err(error) => last_error = Some(error),
                }
            }
            if control.is_none() {
                return Err(last_error
                    .unwrap_or_else(|| ClientError::Protocol("no broker address".to_string())));
            }
        }
        control
            .as_mut()
            .ok_or_else(|| ClientError::Protocol("no control connection".to_string()))
    }

    async fn refresh_metadata_on(
        &self,
        control: &mut Option<Connection>,
        topics: &[String],
    ) -> Result<(), ClientError> {
        let connection = self.control_connection(control).await?;
        let request = crate::topics::metadata_request(Some(topics), true);
        // v4 added allow_auto_topic_creation.
        let (_, response) = connection.send(4..=12, &request).await?;
        let mut state = self.lock();
        for broker in &response.brokers {
            state.metadata.brokers.insert(
                broker.node_id.0,
                format!("{}:{}", broker.host.as_str(), broker.port),
            );
        }
        for topic in response.topics {
            let Some(name) = topic.name.map(|n| n.0.to_string()) else {
                continue;
            };
            match topic.error_code {
                NONE => {
                    let partitions = topic
                        .partitions
                        .iter()
                        .map(|p| {
                            let leader = (p.leader_id.0 >= 0
                                && p.error_code != LEADER_NOT_AVAILABLE)
                                .then_some(p.leader_id.0);
                            (p.partition_index, leader)
                        })
                        .collect();
                    state.metadata.topics.insert(name, partitions);
                }
                code => {
                    tracing::debug!(topic = %name, error = %error_name(code), "metadata");
                    if code == UNKNOWN_TOPIC_OR_PARTITION {
                        state.metadata.topics.remove(&name);
                    }
                }
            }
        }
        Ok(())
    }

    /// InitProducerId: a new producer id, or (v3+, with `current`) the same id with a
    /// bumped epoch. Every partition's sequence restarts at 0.
    async fn init_producer_id(&self, current: Option<ProducerIdentity>) -> Result<(), ClientError> {
        let mut control = self.control.lock().await;
        let result = async {
            let connection = self.control_connection(&mut control).await?;
            let version = connection.version_for(ApiKey::InitProducerId, 0..=5)?;
            let (id, epoch) = match current {
                Some(identity) if version >= 3 => (identity.id, identity.epoch),
                _ => (-1, -1),
            };
            let request = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(i32::MAX)
                .with_producer_id(ProducerId(id))
                .with_producer_epoch(epoch);
            let response = connection.send_at_version(version, &request).await?;
            if response.error_code != NONE {
                return Err(kafka_error("InitProducerId", response.error_code));
            }
            Ok(ProducerIdentity {
                id: response.producer_id.0,
                epoch: response.producer_epoch,
            })
        }
        .await;
        match result {
            Ok(identity) => {
                drop(control);
                let mut state = self.lock();
                tracing::debug!(id = identity.id, epoch = identity.epoch, "producer id");
                state.identity = Some(identity);
                state.bump_pending = false;
                for partition in state.partitions.values_mut() {
                    partition.next_sequence = 0;
                    for batch in partition.queue.iter_mut() {
                        batch.sequence = None;
                    }
                }
                Ok(())
            }
            Err(error) => {
                *control = None;
                Err(error)
            }
        }
    }

    /// Classifies one partition's answer to a sent batch.
    fn classify(
        &self,
        state: &State,
        batch: &Batch,
        code: i16,
        base_offset: i64,
        log_append_ms: i64,
    ) -> Outcome {
        let context = format!("producing to {}", batch.tp);
        match code {
            NONE => Outcome::Success {
                base_offset,
                log_append_ms,
            },
            DUPLICATE_SEQUENCE_NUMBER => Outcome::Success {
                base_offset,
                log_append_ms,
            },
            OUT_OF_ORDER_SEQUENCE_NUMBER | UNKNOWN_PRODUCER_ID | INVALID_PRODUCER_EPOCH => {
                let stale = batch
                    .sequence
                    .is_some_and(|(identity, _)| Some(identity) != state.identity);
                let waiting_for_earlier = code == OUT_OF_ORDER_SEQUENCE_NUMBER
                    && !state.bump_pending
                    && batch.sequence.is_some_and(|(_, sequence)| {
                        state
                            .partitions
                            .get(&batch.tp)
                            .is_some_and(|p| p.has_earlier(sequence))
                    });
                Outcome::Retry {
                    error: kafka_error(context, code),
                    refresh_metadata: false,
                    keep_sequence: waiting_for_earlier,
                    bump: !waiting_for_earlier && !stale,
                }
            }
            MESSAGE_TOO_LARGE if batch.records.len() > 1 => {
                Outcome::Split(kafka_error(context, code))
            }
            code => {
                let retriable =
                    ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable());
                if retriable {
                    Outcome::Retry {
                        error: kafka_error(context, code),
                        refresh_metadata: matches!(
                            code,
                            UNKNOWN_TOPIC_OR_PARTITION
                                | LEADER_NOT_AVAILABLE
                                | NOT_LEADER_OR_FOLLOWER
                                | KAFKA_STORAGE_ERROR
                                | FENCED_LEADER_EPOCH
                                | UNKNOWN_LEADER_EPOCH
                        ),
                        keep_sequence: true,
                        bump: false,
                    }
                } else {
                    Outcome::Fail(kafka_error(context, code))
                }
            }
        }
    }

    /// Applies `outcome` to a batch that was in flight. Replies are sent after the lock is
    /// released, so callbacks may use the producer.
    fn finish(&self, mut batch: Batch, outcome: Outcome) {
        let mut replies: Vec<(Reply, Result<RecordMetadata, ClientError>)> = Vec::new();
        let completed;
        let mut done_batch = None;
        {
            let mut state = self.lock();
            let state = &mut *state;
            let key = (batch.id, batch.sub);
            if let Some(partition) = state.partitions.get_mut(&batch.tp) {
                partition.in_flight.remove(&key);
            }
            match outcome {
                Outcome::Success {
                    base_offset,
                    log_append_ms,
                } => {
                    let partition = batch.tp.partition;
                    for (index, record) in batch.records.drain(..).enumerate() {
                        let offset = if base_offset >= 0 {
                            base_offset + index as i64
                        } else {
                            -1
                        };
                        let timestamp_ms = if log_append_ms >= 0 {
                            log_append_ms
                        } else {
                            record.timestamp_ms
                        };
                        replies.push((
                            record.reply,
                            Ok(RecordMetadata {
                                partition,
                                offset,
                                timestamp_ms,
                            }),
                        ));
                    }
                    completed = true;
                }
                Outcome::Retry {
                    error,
                    refresh_metadata,
                    keep_sequence,
                    bump,
                } => {
                    if refresh_metadata {
                        state.metadata.stale = true;
                    }
                    if bump && self.options.idempotent() {
                        state.bump_pending = true;
                    }
                    if Instant::now() >= batch.created + self.options.delivery_timeout() {
                        if batch.sequence.is_some() && keep_sequence {
                            state.bump_pending = self.options.idempotent();
                        }
                        let error = ClientError::Timeout(
                            self.options.delivery_timeout(),
                            format!(
                                "delivery of {} record(s) to {} (last error: {error})",
                                batch.records.len(),
                                batch.tp
                            ),
                        );
                        fail_records(&mut batch, &error, &mut replies);
                        completed = true;
                    } else {
                        batch.attempts += 1;
                        batch.retry_at =
                            Some(Instant::now() + self.options.backoff(batch.attempts));
                        batch.last_error = Some(error.to_string());
                        if !keep_sequence {
                            batch.sequence = None;
                        }
                        tracing::debug!(tp = %batch.tp, attempt = batch.attempts, %error, "retrying a batch");
                        state
                            .partitions
                            .entry(batch.tp.clone())
                            .or_default()
                            .requeue(batch);
                        return self.after_finish(false, replies, None);
                    }
                }
                Outcome::Split(error) => {
                    tracing::debug!(tp = %batch.tp, records = batch.records.len(), %error, "splitting a batch");
                    if batch.sequence.is_some() && self.options.idempotent() {
                        state.bump_pending = true;
                    }
                    let partition = state.partitions.entry(batch.tp.clone()).or_default();
                    let mut permit = batch.permit.take();
                    for (sub, record) in batch.records.drain(..).enumerate() {
                        let part_permit = permit
                            .as_mut()
                            .and_then(|p| p.split(record.size_bytes.min(p.num_permits())));
                        partition.requeue(Batch {
                            id: batch.id,
                            sub: batch.sub.saturating_mul(1 << 16).saturating_add(sub as u32),
                            tp: batch.tp.clone(),
                            size_bytes: record.size_bytes,
                            records: vec![record],
                            created: batch.created,
                            closed: true,
                            attempts: batch.attempts,
                            retry_at: None,
                            sequence: None,
                            last_error: Some(error.to_string()),
                            permit: part_permit,
                        });
                    }
                    return self.after_finish(false, replies, None);
                }
                Outcome::Fail(error) => {
                    if batch.sequence.is_some() && self.options.idempotent() {
                        state.bump_pending = true;
                    }
                    fail_records(&mut batch, &error, &mut replies);
                    completed = true;
                }
            }
            // A split batch completes when its last part does.
            if completed && !has_parts(state, &batch.tp, batch.id) {
                done_batch = Some(batch.id);
            }
        }
        drop(batch);
        self.after_finish(completed, replies, done_batch);
    }

    fn after_finish(
        &self,
        completed: bool,
        replies: Vec<(Reply, Result<RecordMetadata, ClientError>)>,
        done_batch: Option<u64>,
    ) {
        for (reply, result) in replies {
            reply.complete(result);
        }
        // Only after its callbacks ran: `flush` returning means every callback was called.
        if let Some(id) = done_batch {
            self.lock().incomplete.remove(&id);
        }
        if completed {
            self.completed.notify_waiters();
        }
        self.wake.notify_one();
    }

    /// A request failed as a whole (lost connection, timeout): its outcome is unknown, so
    /// every batch is retried with the same sequence.
    fn request_failed(&self, batches: Vec<Batch>, error: &ClientError) {
        tracing::debug!(%error, batches = batches.len(), "produce request failed; retrying");
        for batch in batches {
            self.finish(
                batch,
                Outcome::Retry {
                    error: copy_error(error),
                    refresh_metadata: true,
                    keep_sequence: true,
                    bump: false,
                },
            );
        }
    }
}

/// Whether parts of split batch `id` are still queued or in flight.
fn has_parts(state: &State, tp: &TopicPartition, id: u64) -> bool {
    state.partitions.get(tp).is_some_and(|p| {
        p.queue.iter().any(|b| b.id == id) || p.in_flight.keys().any(|(i, _)| *i == id)
    })
}

fn fail_records(
    batch: &mut Batch,
    error: &ClientError,
    replies: &mut Vec<(Reply, Result<RecordMetadata, ClientError>)>,
) {
    for record in batch.records.drain(..) {
        replies.push((record.reply, Err(copy_error(error))));
    }
}

/// What one pass of the drain loop decided.
struct Plan {
    requests: BTreeMap<i32, Vec<Batch>>,
    refresh_topics: Option<Vec<String>>,
    init_producer: Option<Option<ProducerIdentity>>,
    expired: Vec<Batch>,
    next_wake: Option<Instant>,
    done: bool,
}

fn make_plan(inner: &Inner, state: &mut State) -> Plan {
    let options = &inner.options;
    let now = Instant::now();
    let closing = inner.is_closed();
    let idempotent = options.idempotent();
    let mut plan = Plan {
        requests: BTreeMap::new(),
        refresh_topics: None,
        init_producer: None,
        expired: Vec::new(),
        next_wake: None,
        done: false,
    };
    let wake_at = |at: Instant, plan: &mut Plan| {
        plan.next_wake = Some(plan.next_wake.map_or(at, |w| w.min(at)));
    };
    // Expire queued batches past the delivery timeout.
    let delivery_timeout = options.delivery_timeout();
    let mut gap = false;
    for partition in state.partitions.values_mut() {
        let mut index = 0;
        while index < partition.queue.len() {
            if now >= partition.queue[index].created + delivery_timeout {
                if let Some(batch) = partition.queue.remove(index) {
                    gap |= batch.sequence.is_some();
                    plan.expired.push(batch);
                }
            } else {
                index += 1;
            }
        }
    }
    if gap && idempotent {
        state.bump_pending = true;
    }
    let any_queued = state.partitions.values().any(|p| !p.queue.is_empty());
    let any_in_flight = state.partitions.values().any(|p| !p.in_flight.is_empty());
    if closing && !any_queued && !any_in_flight {
        plan.done = true;
        return plan;
    }
    // Producer id: first one, or an epoch bump once nothing old is unresolved.
    if idempotent && any_queued {
        if state.identity.is_none() {
            plan.init_producer = Some(None);
            return plan;
        }
        let old_queued = state
            .partitions
            .values()
            .any(|p| p.queue.iter().any(|b| b.sequence.is_some()));
        if state.bump_pending && !any_in_flight && !old_queued {
            plan.init_producer = Some(state.identity);
            return plan;
        }
    }
    let metadata_age = state
        .metadata
        .refreshed
        .map_or(Duration::MAX, |at| now.saturating_duration_since(at));
    let metadata_due = metadata_age >= Duration::from_millis(options.metadata_max_age_ms)
        || (state.metadata.stale && metadata_age >= options.backoff(1));
    let mut missing_leader = false;
    let mut request_bytes: BTreeMap<i32, usize> = BTreeMap::new();
    let flush_below = state.flush_below;
    let identity = state.identity;
    let bump_pending = state.bump_pending;
    let max_in_flight = options.max_in_flight_per_connection.max(1);
    for (tp, partition) in state.partitions.iter_mut() {
        let Some(front) = partition.queue.front() else {
            continue;
        };
        if let Some(retry_at) = front.retry_at {
            if retry_at > now {
                wake_at(retry_at, &mut plan);
                continue;
            }
        }
        let is_retry = front.attempts > 0 || front.sequence.is_some();
        if idempotent && is_retry && !partition.in_flight.is_empty() {
            // A retry goes alone, after everything before it resolved, to keep order.
            continue;
        }
        if partition.in_flight.len() >= max_in_flight {
            continue;
        }
        if idempotent && front.sequence.is_none() && bump_pending {
            continue;
        }
        let linger_end = front.created + options.linger();
        let ready = front.closed
            || front.size_bytes >= options.batch_size_bytes
            || partition.queue.len() > 1
            || now >= linger_end
            || front.id < flush_below
            || closing
            || is_retry;
        if !ready {
            wake_at(linger_end, &mut plan);
            continue;
        }
        let leader = state
            .metadata
            .topics
            .get(&tp.topic)
            .and_then(|p| p.get(&tp.partition))
            .copied()
            .flatten();
        let Some(leader) = leader.filter(|l| state.metadata.brokers.contains_key(l)) else {
            missing_leader = true;
            continue;
        };
        if idempotent && partition.in_flight.values().any(|f| f.leader != leader) {
            // The leader moved while batches are out at the old one: their outcome decides
            // what is retried first. Sent on, newer batches could land at the new leader
            // before an older one that the old leader wrote and replicated; the older one's
            // retry would then fall outside the broker's 5-batch duplicate window and look
            // like a gap (OUT_OF_ORDER_SEQUENCE_NUMBER), and be written twice.
            continue;
        }
        let used = request_bytes.entry(leader).or_default();
        if *used > 0 && *used + front.size_bytes > options.max_request_bytes {
            wake_at(now, &mut plan);
            continue;
        }
        let Some(mut batch) = partition.queue.pop_front() else {
            continue;
        };
        *used += batch.size_bytes;
        batch.closed = true;
        batch.retry_at = None;
        if idempotent && batch.sequence.is_none() {
            if let Some(identity) = identity {
                batch.sequence = Some((identity, partition.next_sequence));
                partition.next_sequence =
                    partition.next_sequence.wrapping_add(batch.record_count());
            }
        }
        partition.in_flight.insert(
            (batch.id, batch.sub),
            InFlight {
                sequence: batch.sequence.map(|(_, s)| s),
                leader,
            },
        );
        plan.requests.entry(leader).or_default().push(batch);
    }
    if missing_leader || metadata_due {
        let mut topics: Vec<String> = state.metadata.topics.keys().cloned().collect();
        topics.extend(state.partitions.keys().map(|tp| tp.topic.clone()));
        topics.sort();
        topics.dedup();
        if missing_leader && !metadata_due {
            // Poll again after a backoff.
            let at = state.metadata.refreshed.unwrap_or(now) + options.backoff(1);
            if at > now {
                wake_at(at, &mut plan);
            } else {
                plan.refresh_topics = Some(topics);
            }
        } else {
            plan.refresh_topics = Some(topics);
        }
    }
    plan
}

/// The drain task: expires, refreshes metadata, bumps the producer epoch and hands ready
/// batches to the broker sender tasks, until closed and empty.
async fn drain_loop(inner: Arc<Inner>) {
    let mut senders: HashMap<i32, mpsc::UnboundedSender<Vec<Batch>>> = HashMap::new();
    loop {
        let plan = {
            let mut state = inner.lock();
            make_plan(&inner, &mut state)
        };
        for batch in plan.expired {
            let error = ClientError::Timeout(
                inner.options.delivery_timeout(),
                format!(
                    "delivery of {} record(s) to {}{}",
                    batch.records.len(),
                    batch.tp,
                    batch
                        .last_error
                        .as_ref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ),
            );
            inner.finish(batch, Outcome::Fail(error));
        }
        if plan.done {
            break;
        }
        let mut progressed = !plan.requests.is_empty();
        if let Some(current) = plan.init_producer {
            progressed = true;
            if let Err(error) = inner.init_producer_id(current).await {
                tracing::warn!(%error, "InitProducerId failed; retrying");
                tokio::time::sleep(inner.options.backoff(2)).await;
            }
        }
        if let Some(topics) = plan.refresh_topics {
            if let Err(error) = inner.refresh_metadata(topics).await {
                tracing::warn!(%error, "metadata refresh failed");
            }
            progressed = true;
        }
        for (leader, batches) in plan.requests {
            let sender = senders.entry(leader).or_insert_with(|| {
                let (sender, receiver) = mpsc::unbounded_channel();
                tokio::spawn(broker_sender(Arc::clone(&inner), leader, receiver));
                sender
            });
            if let Err(mpsc::error::SendError(batches)) = sender.send(batches) {
                senders.remove(&leader);
                inner.request_failed(
                    batches,
                    &ClientError::Protocol(format!("the sender of broker {leader} stopped")),
                );
            }
        }
        if progressed {
            tokio::task::yield_now().await;
            continue;
        }
        match plan.next_wake {
            Some(at) => {
                tokio::select! {
                    _ = inner.wake.notified() => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => inner.wake.notified().await,
        }
    }
    tracing::debug!("producer drain task stopped");
}

/// One broker's sender: writes its Produce requests in order on one pipelined connection
/// (reconnecting after a failure) and spawns a task per response.
async fn broker_sender(
    inner: Arc<Inner>,
    node: i32,
    mut requests: mpsc::UnboundedReceiver<Vec<Batch>>,
) {
    let slot: Arc<Mutex<Option<Arc<PipelinedConnection>>>> = Arc::new(Mutex::new(None));
    while let Some(batches) = requests.recv().await {
        let current = slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let connection = match current {
            Some(connection) => connection,
            None => {
                let address = inner.lock().metadata.brokers.get(&node).cloned();
                let Some(address) = address else {
                    inner.request_failed(
                        batches,
                        &ClientError::Protocol(format!("broker {node} is not in the metadata")),
                    );
                    continue;
                };
                match PipelinedConnection::connect_as(
                    &address,
                    inner.options.request_timeout(),
                    inner.options.max_in_flight_per_connection,
                    &inner.options.client_id,
                )
                .await
                {
                    Ok(connection) => {
                        let connection = Arc::new(connection);
                        *slot.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(Arc::clone(&connection));
                        connection
                    }
                    Err(error) => {
                        inner.request_failed(batches, &error);
                        continue;
                    }
                }
            }
        };
        let version = match connection.version_for(ApiKey::Produce, PRODUCE_VERSIONS) {
            Ok(version) => version,
            Err(error) => {
                for batch in batches {
                    inner.finish(batch, Outcome::Fail(copy_error(&error)));
                }
                continue;
            }
        };
        // Encode; a batch that cannot be encoded fails alone.
        let mut encoded: Vec<(Batch, Bytes)> = Vec::with_capacity(batches.len());
        for batch in batches {
            match batch.encode(&inner.options) {
                Ok(bytes) => encoded.push((batch, bytes)),
                Err(error) => inner.finish(batch, Outcome::Fail(error)),
            }
        }
        if encoded.is_empty() {
            continue;
        }
        let mut topics: Vec<TopicProduceData> = Vec::new();
        for (batch, bytes) in &encoded {
            let data = PartitionProduceData::default()
                .with_index(batch.tp.partition)
                .with_records(Some(bytes.clone()));
            match topics
                .iter_mut()
                .find(|t| t.name.0.as_str() == batch.tp.topic)
            {
                Some(topic) => topic.partition_data.push(data),
                None => topics.push(
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(batch.tp.topic.clone())))
                        .with_partition_data(vec![data]),
                ),
            }
        }
        let batches: Vec<Batch> = encoded.into_iter().map(|(batch, _)| batch).collect();
        let timeout_ms = i32::try_from(inner.options.request_timeout_ms).unwrap_or(i32::MAX);
        let request = ProduceRequest::default()
            .with_acks(inner.options.acks)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(topics);
        if inner.options.acks == 0 {
            let request_timeout = inner.options.request_timeout();
            let written = tokio::time::timeout(
                request_timeout,
                connection.submit_without_response(version, &request),
            )
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Timeout(
                    request_timeout,
                    "writing a Produce request".to_string(),
                ))
            });
            match written {
                Ok(()) => {
                    for batch in batches {
                        inner.finish(
                            batch,
                            Outcome::Success {
                                base_offset: -1,
                                log_append_ms: -1,
                            },
                        );
                    }
                }
                Err(error) => {
                    forget(&slot, &connection);
                    inner.request_failed(batches, &error);
                }
            }
            continue;
        }
        // Bounded: if the broker stops answering, the in-flight slots never free up. A
        // write cut short leaves a partial frame, but the connection is discarded then.
        let request_timeout = inner.options.request_timeout();
        let submitted = tokio::time::timeout(request_timeout, connection.submit(version, &request))
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Timeout(
                    request_timeout,
                    "room for a Produce request (every in-flight request is unanswered)"
                        .to_string(),
                ))
            });
        match submitted {
            Ok(pending) => {
                tokio::spawn(handle_response(
                    Arc::clone(&inner),
                    Arc::clone(&slot),
                    connection,
                    pending,
                    batches,
                ));
            }
            Err(error) => {
                forget(&slot, &connection);
                inner.request_failed(batches, &error);
            }
        }
    }
}

/// Drops `connection` from the slot (if still there) so the next request reconnects.
fn forget(slot: &Mutex<Option<Arc<PipelinedConnection>>>, connection: &Arc<PipelinedConnection>) {
    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
    if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, connection)) {
        *slot = None;
    }
}

async fn handle_response(
    inner: Arc<Inner>,
    slot: Arc<Mutex<Option<Arc<PipelinedConnection>>>>,
    connection: Arc<PipelinedConnection>,
    pending: PendingResponse<ProduceResponse>,
    batches: Vec<Batch>,
) {
    let response = match pending.wait().await {
        Ok(response) => response,
        Err(error) => {
            // A missing answer desynchronises the pipeline: close the connection.
            forget(&slot, &connection);
            drop(connection);
            inner.request_failed(batches, &error);
            return;
        }
    };
    drop(connection);
    let mut answers: HashMap<(String, i32), (i16, i64, i64)> = HashMap::new();
    for topic in &response.responses {
        for partition in &topic.partition_responses {
            answers.insert(
                (topic.name.0.to_string(), partition.index),
                (
                    partition.error_code,
                    partition.base_offset,
                    partition.log_append_time_ms,
                ),
            );
        }
    }
    for batch in batches {
        let outcome = match answers.get(&(batch.tp.topic.clone(), batch.tp.partition)) {
            Some(&(code, base_offset, log_append_ms)) => {
                let state = inner.lock();
                inner.classify(&state, &batch, code, base_offset, log_append_ms)
            }
            None => Outcome::Retry {
                error: ClientError::Protocol(format!(
                    "the Produce response has no answer for {}",
                    batch.tp
                )),
                refresh_metadata: true,
                keep_sequence: true,
                bump: false,
            },
        };
        inner.finish(batch, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(10), "MESSAGE_TOO_LARGE");
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(45), "OUT_OF_ORDER_SEQUENCE_NUMBER");
        assert_eq!(error_name(0), "NONE");
    }

    fn batch(id: u64, sequence: Option<i32>) -> Batch {
        Batch {
            id,
            sub: 0,
            tp: TopicPartition::new("t", 0),
            records: Vec::new(),
            size_bytes: 0,
            created: Instant::now(),
            closed: true,
            attempts: 0,
            retry_at: None,
            sequence: sequence.map(|s| (ProducerIdentity { id: 1, epoch: 0 }, s)),
            last_error: None,
            permit: None,
        }
    }

    #[test]
    fn retried_batches_go_back_in_sequence_order_before_new_ones() {
        let mut partition = PartitionState::default();
        partition.queue.push_back(batch(9, None));
        partition.requeue(batch(5, Some(10)));
        partition.requeue(batch(3, Some(0)));
        partition.requeue(batch(4, Some(5)));
        let order: Vec<u64> = partition.queue.iter().map(|b| b.id).collect();
        assert_eq!(order, vec![3, 4, 5, 9]);
        assert!(partition.has_earlier(5));
        assert!(!partition.has_earlier(0));
    }
}
