//! Producer side of `sluice bench produce` and `e2e`: `--producers` senders, each with its
//! own connections, building batches round-robin over the partitions at a fixed rate or as
//! fast as the in-flight window allows (then one request carries a batch per partition).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::records::Compression;
use sluice_client::producer::{encode_batch, OutgoingRecord};
use sluice_client::{BatchProducer, ProducerConfig, TopicLayout};
use tokio::task::JoinSet;

use super::pacing::{rate_per_sender, records_per_batch, share_of, Pacer};
use super::stats::{latency_histogram, merge};
use super::Counters;

/// Bytes at the start of each value holding its stamp: microseconds since the run's epoch,
/// big-endian. The e2e consumer reads it for a microsecond-resolution latency (Kafka record
/// timestamps are milliseconds).
pub const STAMP_BYTES: usize = 8;

/// What the producers are asked to do.
#[derive(Debug, Clone)]
pub struct ProducePlan {
    /// Time base of value stamps (shared with the e2e consumer).
    pub epoch: Instant,
    /// When sending starts; intended send times count from here.
    pub start: Instant,
    /// Messages in total over all producers; `None`: until `deadline`.
    pub messages: Option<u64>,
    /// Stop creating messages due at or after this.
    pub deadline: Option<Instant>,
    /// Messages per second over all producers; 0: as fast as possible.
    pub rate_msgs_per_sec: f64,
    pub producers: usize,
    pub message_bytes: usize,
    pub batch_bytes: usize,
    /// How long a paced batch stays open for more records after its first one.
    pub linger: Duration,
    pub compression: Compression,
}

/// What the producers did.
pub struct ProduceOutcome {
    pub histogram: Histogram<u64>,
    /// Messages acknowledged (or written, with acks=0).
    pub messages: u64,
    pub bytes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl ProduceOutcome {
    fn new() -> ProduceOutcome {
        ProduceOutcome {
            histogram: latency_histogram(),
            messages: 0,
            bytes: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn fail(&mut self, error: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            tracing::warn!(%error, "produce failed");
            self.first_error = Some(error);
        }
    }

    fn absorb(&mut self, other: ProduceOutcome) {
        merge(&mut self.histogram, &other.histogram);
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// A value of `message_bytes` bytes: the stamp (when it fits), then the filler pattern.
pub fn stamped_value(filler: &Bytes, stamp_us: u64, message_bytes: usize) -> Bytes {
    if message_bytes < STAMP_BYTES {
        return filler.slice(..message_bytes.min(filler.len()));
    }
    let mut value = BytesMut::with_capacity(message_bytes);
    value.put_u64(stamp_us);
    value.extend_from_slice(&filler[STAMP_BYTES..message_bytes]);
    value.freeze()
}

/// The stamp of a value written by [`stamped_value`].
pub fn stamp_of(value: &[u8]) -> Option<u64> {
    let bytes: [u8; STAMP_BYTES] = value.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

fn filler(message_bytes: usize) -> Bytes {
    // Not all one byte, so compression codecs have something (but not too much) to do.
    Bytes::from(
        (0..message_bytes)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    )
}

fn micros_since(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Runs `plan.producers` senders until their share of the messages (or the deadline) is
/// sent and acknowledged.
pub async fn run_producers(
    layout: &TopicLayout,
    config: &ProducerConfig,
    plan: &ProducePlan,
    counters: Arc<Counters>,
) -> anyhow::Result<ProduceOutcome> {
    let mut producers = Vec::with_capacity(plan.producers);
    for _ in 0..plan.producers.max(1) {
        producers.push(Arc::new(
            BatchProducer::connect(layout.clone(), config.clone()).await?,
        ));
    }
    let mut senders = JoinSet::new();
    for (index, producer) in producers.into_iter().enumerate() {
        senders.spawn(sender(producer, index, plan.clone(), Arc::clone(&counters)));
    }
    let mut outcome = ProduceOutcome::new();
    while let Some(joined) = senders.join_next().await {
        match joined {
            Ok(one) => outcome.absorb(one),
            Err(error) => outcome.fail(format!("a producer task failed: {error}")),
        }
    }
    Ok(outcome)
}

/// Most bytes of batches in one unpaced Produce request (Kafka's `max.request.size`).
const REQUEST_BYTES_MAX: usize = 1024 * 1024;

/// Where one sender is in its share of the messages.
struct Source {
    plan: ProducePlan,
    pacer: Option<Pacer>,
    /// Messages this sender makes; `None`: until the deadline.
    count: Option<u64>,
    next: u64,
    per_batch: usize,
    filler: Bytes,
}

impl Source {
    /// The next batch's records and their stamps: full at `per_batch`, shorter at the end
    /// of the run or (paced) when the batch has been open for `linger`. Empty at the end.
    async fn fill_batch(&mut self) -> (Vec<OutgoingRecord>, Vec<u64>) {
        let mut records = Vec::with_capacity(self.per_batch);
        let mut stamps_us = Vec::with_capacity(self.per_batch);
        let mut opened: Option<Instant> = None;
        let timestamp_ms = now_ms();
        while records.len() < self.per_batch {
            if self.count.is_some_and(|c| self.next >= c) {
                break;
            }
            let due = self.pacer.map(|p| p.intended(self.next));
            let at = due.unwrap_or_else(Instant::now);
            if self.plan.deadline.is_some_and(|d| at >= d) {
                break;
            }
            if let Some(due) = due {
                if due > Instant::now() {
                    if opened.is_some_and(|open| due > open + self.plan.linger) {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            let stamp_us = micros_since(self.plan.epoch, at);
            records.push(OutgoingRecord {
                timestamp_ms,
                key: None,
                value: Some(stamped_value(
                    &self.filler,
                    stamp_us,
                    self.plan.message_bytes,
                )),
            });
            stamps_us.push(stamp_us);
            opened.get_or_insert_with(Instant::now);
            self.next += 1;
        }
        (records, stamps_us)
    }
}

/// One sender: builds batches (full at `batch_bytes`, or after `linger` when paced) for the
/// partitions in turn and records latencies when acks arrive. Paced, each batch goes out
/// alone as soon as it closes (latency first); unpaced, a request carries one full batch for
/// each partition, up to `REQUEST_BYTES_MAX`, as a Kafka producer's sender drains every
/// ready batch for a broker into one request (throughput first).
async fn sender(
    producer: Arc<BatchProducer>,
    index: usize,
    plan: ProducePlan,
    counters: Arc<Counters>,
) -> ProduceOutcome {
    let outcome = Arc::new(Mutex::new(ProduceOutcome::new()));
    let partitions = producer.partitions();
    if partitions.is_empty() {
        lock(&outcome).fail("the topic has no partitions".to_string());
        return std::mem::replace(&mut *lock(&outcome), ProduceOutcome::new());
    }
    let pacer = Pacer::new(
        plan.start,
        rate_per_sender(plan.rate_msgs_per_sec, plan.producers.max(1)),
    );
    let per_request = if pacer.is_some() {
        1
    } else {
        partitions
            .len()
            .min(REQUEST_BYTES_MAX / plan.batch_bytes.max(1))
            .max(1)
    };
    let mut source = Source {
        count: plan
            .messages
            .map(|m| share_of(m, plan.producers.max(1), index)),
        pacer,
        next: 0,
        per_batch: records_per_batch(plan.batch_bytes, plan.message_bytes),
        filler: filler(plan.message_bytes),
        plan,
    };
    let mut acks = JoinSet::new();
    let mut cursor = index;
    'requests: loop {
        let mut batches = Vec::with_capacity(per_request);
        let mut stamps: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
        while batches.len() < per_request {
            let (records, stamps_us) = source.fill_batch().await;
            if records.is_empty() {
                break;
            }
            let batch = match encode_batch(&records, source.plan.compression) {
                Ok(batch) => batch,
                Err(error) => {
                    lock(&outcome).fail(error.to_string());
                    break 'requests;
                }
            };
            let partition = partitions[cursor % partitions.len()];
            cursor += 1;
            batches.push((partition, batch));
            stamps.insert(partition, stamps_us);
        }
        if batches.is_empty() {
            break;
        }
        let sent_at = Instant::now();
        let requests = match producer.send_many(batches).await {
            Ok(requests) => requests,
            Err(error) => {
                lock(&outcome).fail(error.to_string());
                break;
            }
        };
        for ack in requests {
            let outcome = Arc::clone(&outcome);
            let counters = Arc::clone(&counters);
            let stamps = stamps.clone();
            let (epoch, paced) = (source.plan.epoch, source.pacer.is_some());
            let message_bytes = source.plan.message_bytes;
            acks.spawn(async move {
                let result = ack.wait().await;
                let acked_at = Instant::now();
                let mut outcome = lock(&outcome);
                let answers = match result {
                    Ok(answers) => answers,
                    Err(error) => return outcome.fail(error.to_string()),
                };
                for (partition, answer) in answers {
                    if let Err(error) = answer {
                        outcome.fail(error.to_string());
                        continue;
                    }
                    let stamps_us = stamps.get(&partition).map_or(&[][..], Vec::as_slice);
                    let n = stamps_us.len() as u64;
                    if paced {
                        let acked_us = micros_since(epoch, acked_at);
                        for stamp_us in stamps_us {
                            outcome
                                .histogram
                                .saturating_record(acked_us.saturating_sub(*stamp_us));
                        }
                    } else {
                        let latency_us = micros_since(sent_at, acked_at);
                        outcome.histogram.saturating_record_n(latency_us, n);
                    }
                    let bytes = n * message_bytes as u64;
                    outcome.messages += n;
                    outcome.bytes += bytes;
                    counters.messages.fetch_add(n, Ordering::Relaxed);
                    counters.bytes.fetch_add(bytes, Ordering::Relaxed);
                }
            });
        }
    }
    while let Some(joined) = acks.join_next().await {
        if let Err(error) = joined {
            lock(&outcome).fail(format!("an ack task failed: {error}"));
        }
    }
    let mut result = ProduceOutcome::new();
    result.absorb(std::mem::replace(
        &mut *lock(&outcome),
        ProduceOutcome::new(),
    ));
    result
}

/// Locks a mutex whose holder cannot leave it inconsistent (plain counters), even if a
/// holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_carry_their_stamp_and_have_the_requested_size() {
        let pattern = filler(1024);
        let value = stamped_value(&pattern, 123_456_789, 1024);
        assert_eq!(value.len(), 1024);
        assert_eq!(stamp_of(&value), Some(123_456_789));
        assert_eq!(&value[8..], &pattern[8..]);
        let small = stamped_value(&filler(4), 5, 4);
        assert_eq!(small.len(), 4);
        assert_eq!(stamp_of(&small), None);
    }
}
