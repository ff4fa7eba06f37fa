//! Consumer side of `sluice bench consume` and `e2e`.
//!
//! consume reads data that is already there: one fetch loop per partition, all sharing one
//! pipelined connection per leader, so every partition has a fetch in flight at once.
//! (Fetches of one partition cannot overlap: the next offset is known only when the
//! previous response arrives.) e2e waits for new data: one loop per leader fetching all of
//! its partitions in one request, as Kafka consumers do, because responses on a connection
//! come back in order and a long-polling fetch of an idle partition would hold back the
//! answers for the others.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use sluice_client::fetcher::FetchedBatch;
use sluice_client::{FetchConfig, Fetcher, TopicLayout};
use tokio::task::JoinSet;

use super::produce::stamp_of;
use super::stats::{latency_histogram, merge};
use super::Counters;

/// What the consumer reads and when it stops.
#[derive(Debug, Clone)]
pub struct ConsumePlan {
    /// Time base of value stamps (shared with the producers in e2e).
    pub epoch: Instant,
    pub start_offsets: BTreeMap<i32, i64>,
    /// Stop each partition here (consume: the log end when the run started).
    pub end_offsets: Option<BTreeMap<i32, i64>>,
    /// e2e: read each record's stamp and record its end-to-end latency; otherwise count
    /// records from batch headers and record each fetch's round trip.
    pub end_to_end: bool,
    pub deadline: Option<Instant>,
}

/// When the consumer may stop: all partitions stop once `counters.messages` reaches
/// `target` (u64::MAX until known; e2e sets it to the acknowledged count when the producers
/// finish), or `abort` is set.
pub struct StopCondition {
    pub target: AtomicU64,
    pub abort: std::sync::atomic::AtomicBool,
}

impl StopCondition {
    pub fn new(target: Option<u64>) -> StopCondition {
        StopCondition {
            target: AtomicU64::new(target.unwrap_or(u64::MAX)),
            abort: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn reached(&self, consumed: u64) -> bool {
        self.abort.load(Ordering::Relaxed) || consumed >= self.target.load(Ordering::Relaxed)
    }
}

/// What the consumer did.
pub struct ConsumeOutcome {
    pub histogram: Histogram<u64>,
    pub messages: u64,
    pub bytes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// When the last records arrived (the run may idle in a long poll after that).
    pub last_receipt: Option<Instant>,
}

/// Records of `batch` at or after `offset` (a fetch may return the whole batch holding it).
pub fn records_from(batch: &FetchedBatch, offset: i64) -> u64 {
    let records = u64::try_from(batch.records_count).unwrap_or(0);
    if batch.base_offset >= offset {
        return records;
    }
    let remaining = u64::try_from(batch.last_offset.saturating_add(1) - offset).unwrap_or(0);
    remaining.min(records)
}

/// Runs the fetch loops over the partitions of `plan.start_offsets`.
pub async fn run_consumer(
    layout: &TopicLayout,
    config: &FetchConfig,
    plan: &ConsumePlan,
    stop: Arc<StopCondition>,
    counters: Arc<Counters>,
) -> anyhow::Result<ConsumeOutcome> {
    let fetcher = Arc::new(Fetcher::connect(layout, config.clone()).await?);
    let groups: Vec<Vec<i32>> = if plan.end_to_end {
        fetcher.leader_groups()
    } else {
        plan.start_offsets.keys().map(|p| vec![*p]).collect()
    };
    let mut loops = JoinSet::new();
    for group in groups {
        let positions: Vec<Position> = group
            .into_iter()
            .filter_map(|partition| {
                let offset = *plan.start_offsets.get(&partition)?;
                let end = plan
                    .end_offsets
                    .as_ref()
                    .and_then(|ends| ends.get(&partition).copied());
                Some(Position {
                    partition,
                    offset,
                    end,
                })
            })
            .collect();
        if positions.is_empty() {
            continue;
        }
        loops.spawn(fetch_loop(
            Arc::clone(&fetcher),
            positions,
            plan.clone(),
            Arc::clone(&stop),
            Arc::clone(&counters),
        ));
    }
    let mut outcome = ConsumeOutcome::new();
    while let Some(joined) = loops.join_next().await {
        let one = match joined {
            Ok(one) => one,
            Err(error) => {
                outcome.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| format!("a fetch task failed: {error}"));
                continue;
            }
        };
        merge(&mut outcome.histogram, &one.histogram);
        outcome.messages += one.messages;
        outcome.bytes += one.bytes;
        outcome.errors += one.errors;
        outcome.last_receipt = outcome.last_receipt.max(one.last_receipt);
        if outcome.first_error.is_none() {
            outcome.first_error = one.first_error;
        }
    }
    Ok(outcome)
}

impl ConsumeOutcome {
    fn new() -> ConsumeOutcome {
        ConsumeOutcome {
            histogram: latency_histogram(),
            messages: 0,
            bytes: 0,
            errors: 0,
            first_error: None,
            last_receipt: None,
        }
    }

    fn fail(&mut self, stop: &StopCondition, error: String) {
        tracing::warn!(%error, "fetch failed");
        self.errors += 1;
        self.first_error.get_or_insert(error);
        stop.abort.store(true, Ordering::Relaxed);
    }
}

/// Where one partition's reading stands.
#[derive(Debug, Clone, Copy)]
struct Position {
    partition: i32,
    offset: i64,
    end: Option<i64>,
}

impl Position {
    fn done(&self) -> bool {
        self.end.is_some_and(|end| self.offset >= end)
    }
}

fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

async fn fetch_loop(
    fetcher: Arc<Fetcher>,
    mut positions: Vec<Position>,
    plan: ConsumePlan,
    stop: Arc<StopCondition>,
    counters: Arc<Counters>,
) -> ConsumeOutcome {
    let mut outcome = ConsumeOutcome::new();
    loop {
        let wanted: Vec<(i32, i64)> = positions
            .iter()
            .filter(|p| !p.done())
            .map(|p| (p.partition, p.offset))
            .collect();
        if wanted.is_empty()
            || stop.reached(counters.messages.load(Ordering::Relaxed))
            || plan.deadline.is_some_and(|d| Instant::now() >= d)
        {
            break;
        }
        let sent_at = Instant::now();
        let fetched = match fetcher.fetch(&wanted).await {
            Ok(pending) => pending.wait().await,
            Err(error) => Err(error),
        };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(error) => {
                outcome.fail(&stop, error.to_string());
                break;
            }
        };
        let received_at = Instant::now();
        if !plan.end_to_end && fetched.iter().any(|f| !f.batches.is_empty()) {
            outcome
                .histogram
                .saturating_record(micros(received_at.duration_since(sent_at)));
        }
        let received_us = micros(received_at.saturating_duration_since(plan.epoch));
        let (mut messages, mut bytes) = (0u64, 0u64);
        for answer in &fetched {
            let Some(position) = positions
                .iter_mut()
                .find(|p| p.partition == answer.partition)
            else {
                continue;
            };
            let (offset, end) = (position.offset, position.end);
            for batch in &answer.batches {
                if batch.last_offset < offset || end.is_some_and(|end| batch.base_offset >= end) {
                    continue;
                }
                if plan.end_to_end {
                    let records = match batch.records() {
                        Ok(records) => records,
                        Err(error) => {
                            outcome.fail(&stop, error.to_string());
                            return outcome;
                        }
                    };
                    for record in records.iter().filter(|r| r.offset >= offset) {
                        let value = record.value.as_deref().unwrap_or_default();
                        if let Some(stamp_us) = stamp_of(value) {
                            outcome
                                .histogram
                                .saturating_record(received_us.saturating_sub(stamp_us));
                        }
                        messages += 1;
                        bytes += value.len() as u64;
                    }
                } else {
                    messages += records_from(batch, offset);
                    bytes += batch.bytes.len() as u64;
                }
            }
            position.offset = answer.next_offset(offset);
        }
        if messages > 0 {
            outcome.last_receipt = Some(received_at);
        }
        outcome.messages += messages;
        outcome.bytes += bytes;
        counters.messages.fetch_add(messages, Ordering::Relaxed);
        counters.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn batch(base_offset: i64, last_offset: i64, records_count: i32) -> FetchedBatch {
        FetchedBatch {
            base_offset,
            last_offset,
            records_count,
            first_timestamp_ms: 0,
            max_timestamp_ms: 0,
            bytes: Bytes::new(),
        }
    }

    #[test]
    fn records_before_the_fetch_offset_are_not_counted() {
        assert_eq!(records_from(&batch(10, 19, 10), 10), 10);
        assert_eq!(records_from(&batch(10, 19, 10), 5), 10);
        assert_eq!(records_from(&batch(10, 19, 10), 15), 5);
        assert_eq!(records_from(&batch(10, 19, 10), 25), 0);
    }

    #[test]
    fn stop_condition_follows_target_and_abort() {
        let stop = StopCondition::new(None);
        assert!(!stop.reached(1_000_000));
        stop.target.store(10, Ordering::Relaxed);
        assert!(!stop.reached(9));
        assert!(stop.reached(10));
        let stop = StopCondition::new(Some(100));
        stop.abort.store(true, Ordering::Relaxed);
        assert!(stop.reached(0));
    }
}
