//! `sluice consume TOPIC -g GROUP --exec CMD`: runs a command per record through the SDK's
//! processing helper. The record's value is the command's stdin; its topic, partition,
//! offset and key are in `SLUICE_TOPIC`, `SLUICE_PARTITION`, `SLUICE_OFFSET` and
//! `SLUICE_KEY`. A non-zero exit (or running past `--exec-timeout-ms`) is a failure: the
//! record is retried with exponential backoff, then parked on the dead-letter topic with
//! headers saying where it came from and why, and the group commits past it. Records with
//! the same key run in order, different keys in parallel up to `--concurrency`; offsets
//! are committed only up to the lowest record not yet done.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_client::processor::{DeadLetterTopic, HandlerError, ProcessorError, RetryConfig};
use sluice_client::{
    Consumer, ConsumerRecord, Processor, ProcessorConfig, Producer, ProducerOptions,
    RebalanceListener, TopicPartition,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How `--exec` runs (from `sluice consume`'s arguments).
pub struct ExecPlan {
    pub command: String,
    pub topic: String,
    pub bootstrap: String,
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
    pub dlq: Option<String>,
    pub concurrency: usize,
    pub exec_timeout_ms: u64,
    pub max_messages: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// Bytes of a failing command's stderr kept as the dead letter's error text.
const ERROR_TEXT_BYTES_MAX: usize = 1024;
/// Longest wait of one poll, so commits, idle timeouts and Ctrl-C are handled promptly.
const POLL_MS_MAX: u64 = 200;
/// How often finished records are committed while records keep coming.
const COMMIT_INTERVAL: Duration = Duration::from_millis(500);

/// Runs the command for one record.
async fn run_command(
    command: Arc<String>,
    timeout: Duration,
    record: ConsumerRecord,
) -> Result<(), HandlerError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command.as_str())
        .env("SLUICE_TOPIC", &record.topic)
        .env("SLUICE_PARTITION", record.partition.to_string())
        .env("SLUICE_OFFSET", record.offset.to_string())
        .env(
            "SLUICE_KEY",
            record
                .key
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .as_ref(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HandlerError::permanent(format!("cannot run `sh -c {command}`: {e}")))?;
    let mut stdin = child.stdin.take();
    let mut stderr = child.stderr.take();
    let value = record.value.clone().unwrap_or_default();
    let finished = tokio::time::timeout(timeout, async {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its input closes the pipe: not a failure.
            let _ = stdin.write_all(&value).await;
        }
        drop(stdin.take());
        let mut text = Vec::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.read_to_end(&mut text).await;
        }
        (child.wait().await, text)
    })
    .await;
    let (status, text) = match finished {
        Ok(result) => result,
        Err(_) => {
            return Err(HandlerError::new(format!(
                "`{command}` ran longer than {} ms and was killed",
                timeout.as_millis()
            )))
        }
    };
    let status = status.map_err(|e| HandlerError::new(format!("waiting for `{command}`: {e}")))?;
    if status.success() {
        return Ok(());
    }
    // Echo the command's complaints, then keep their tail as the error text.
    eprint!("{}", String::from_utf8_lossy(&text));
    let tail = &text[text.len().saturating_sub(ERROR_TEXT_BYTES_MAX)..];
    let tail = String::from_utf8_lossy(tail);
    Err(HandlerError::new(format!(
        "`{command}` exited with {status}{}{}",
        if tail.trim().is_empty() { "" } else { ": " },
        tail.trim()
    )))
}

/// Finishes the records of revoked partitions before they are given up and hands their
/// final offsets to the consumer to commit.
struct Revoker {
    processor: Processor,
}

impl Revoker {
    fn revoke(&self, partitions: &[TopicPartition]) -> BTreeMap<TopicPartition, i64> {
        let processor = self.processor.clone();
        // The consumer calls listeners synchronously inside `poll`; the runtime is
        // multi-threaded, so the running handlers keep going on the other workers.
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(processor.revoke(partitions))
        })
    }
}

impl RebalanceListener for Revoker {
    fn on_partitions_revoked(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Vec<(TopicPartition, i64)> {
        self.revoke(partitions).into_iter().collect()
    }

    fn on_partitions_lost(&mut self, partitions: &[TopicPartition]) {
        // Someone else owns them now: stop, and commit nothing for them.
        self.revoke(partitions);
    }
}

/// Commits what the processor finished in the partitions this member still owns.
async fn commit_done(
    consumer: &mut Consumer,
    processor: &Processor,
    last: &mut BTreeMap<TopicPartition, i64>,
) -> anyhow::Result<()> {
    let owned = consumer.assignment();
    let offsets: BTreeMap<TopicPartition, i64> = processor
        .committable()
        .into_iter()
        .filter(|(tp, offset)| owned.contains(tp) && last.get(tp) != Some(offset))
        .collect();
    if offsets.is_empty() {
        return Ok(());
    }
    match consumer.commit(&offsets).await {
        Ok(()) => {
            last.extend(offsets);
            Ok(())
        }
        // A rebalance refused it: the revoke listener commits the final offsets.
        Err(sluice_client::ClientError::CommitFailed(reason)) => {
            tracing::info!(%reason, "commit refused by a rebalance");
            Ok(())
        }
        Err(error) => Err(error).context("cannot commit the group's offsets"),
    }
}

pub async fn run(mut consumer: Consumer, plan: ExecPlan) -> anyhow::Result<()> {
    let producer = Producer::connect(&plan.bootstrap, ProducerOptions::default())
        .await
        .context("cannot connect the dead-letter producer")?;
    let dead_letter_topic = match &plan.dlq {
        Some(topic) => DeadLetterTopic::Fixed(topic.clone()),
        None => DeadLetterTopic::default(),
    };
    let config = ProcessorConfig {
        concurrency: plan.concurrency.max(1),
        retry: RetryConfig {
            max_attempts: plan.max_attempts.max(1),
            retry_backoff_ms: plan.retry_backoff_ms,
            ..RetryConfig::default()
        },
        dead_letter_topic,
        ..ProcessorConfig::default()
    };
    let command = Arc::new(plan.command.clone());
    let timeout = Duration::from_millis(plan.exec_timeout_ms.max(1));
    let processor = Processor::new(
        config,
        move |record| run_command(Arc::clone(&command), timeout, record),
        Arc::new(producer.clone()),
    );
    consumer.set_rebalance_listener(Box::new(Revoker {
        processor: processor.clone(),
    }));
    consumer
        .subscribe(&[plan.topic.as_str()])
        .await
        .context("cannot subscribe")?;
    let outcome = process(&mut consumer, &processor, &plan).await;
    let drained = processor.drain().await;
    let mut committed = BTreeMap::new();
    let final_commit = commit_done(&mut consumer, &processor, &mut committed).await;
    let metrics = processor.metrics();
    let _ = processor.close().await;
    producer.close().await;
    let closed = consumer.close().await;
    eprintln!(
        "processed {} record(s): {} handled, {} dead-lettered, {} retr{}",
        metrics.handled + metrics.dead_lettered + metrics.deduplicated,
        metrics.handled,
        metrics.dead_lettered,
        metrics.retried,
        if metrics.retried == 1 { "y" } else { "ies" }
    );
    outcome?;
    drained.context("records could not be parked on the dead-letter topic")?;
    final_commit?;
    closed?;
    Ok(())
}

async fn process(
    consumer: &mut Consumer,
    processor: &Processor,
    plan: &ExecPlan,
) -> anyhow::Result<()> {
    let mut submitted: u64 = 0;
    let mut last_activity = Instant::now();
    let mut last_commit = Instant::now();
    let mut committed = BTreeMap::new();
    loop {
        if plan.max_messages.is_some_and(|max| submitted >= max) {
            return Ok(());
        }
        let busy = processor.metrics().in_flight > 0;
        if busy || consumer.assignment().is_empty() {
            last_activity = Instant::now();
        }
        let Some(wait_ms) =
            crate::output::poll_wait_ms(last_activity, plan.timeout_ms, POLL_MS_MAX)
        else {
            return Ok(());
        };
        let mut records = tokio::select! {
            polled = consumer.poll(Duration::from_millis(wait_ms)) => polled?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        if let Some(max) = plan.max_messages {
            records.truncate(usize::try_from(max - submitted).unwrap_or(usize::MAX));
        }
        if !records.is_empty() {
            last_activity = Instant::now();
        }
        for record in records {
            submitted += 1;
            match processor.submit(record).await {
                Ok(()) => {}
                // Given up in a rebalance while this poll's records were handed over.
                Err(ProcessorError::Revoked(partition)) => {
                    tracing::debug!(%partition, "record of a revoked partition skipped");
                }
                Err(error) => return Err(error).context("the processor refused a record"),
            }
        }
        if last_commit.elapsed() >= COMMIT_INTERVAL {
            commit_done(consumer, processor, &mut committed).await?;
            last_commit = Instant::now();
        }
    }
}
