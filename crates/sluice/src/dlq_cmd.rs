//! `sluice dlq list|replay TOPIC`: what a dead-letter topic holds (where each record came
//! from, after how many attempts, why it failed) and replaying it to its original topic.
//! Replay reads with a consumer group (default `sluice-dlq-replay`) and commits after the
//! replayed records are acknowledged, so running it again only re-drives new dead letters.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use sluice_client::admin::{EARLIEST, LATEST};
use sluice_client::consumer::{AutoOffsetReset, Consumer, ConsumerOptions};
use sluice_client::processor::{dead_letter_headers, replay_record};
use sluice_client::{ConsumerRecord, Producer, ProducerOptions, TopicPartition};

use crate::output::{self, print_json, print_table, CommonArgs, Output};

#[derive(Args)]
pub struct DlqArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// The records of a dead-letter topic: origin, attempts, error, time.
    List {
        /// The dead-letter topic, e.g. `orders.dlq`.
        topic: String,
        /// Show at most this many records (oldest first).
        #[arg(long, short = 'n')]
        max_messages: Option<usize>,
    },
    /// Produce the records of a dead-letter topic again, to the topic each came from (or
    /// --to), without the `sluice.dlq.*` headers.
    Replay {
        /// The dead-letter topic.
        topic: String,
        /// Send every record to this topic instead of its original one.
        #[arg(long)]
        to: Option<String>,
        /// Group that remembers how far replay got.
        #[arg(long, short = 'g', default_value = "sluice-dlq-replay")]
        group: String,
    },
}

/// Longest wait of one poll while reading up to the end offsets.
const POLL_MS: u64 = 500;
/// Polls in a row without a record before reading up to the end is given up.
const EMPTY_POLLS_MAX: u32 = 20;

pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    match args.command {
        DlqCommand::List {
            topic,
            max_messages,
        } => list(&args.common, &topic, max_messages).await,
        DlqCommand::Replay { topic, to, group } => {
            replay(&args.common, &topic, to.as_deref(), &group).await
        }
    }
}

/// Per partition of `topic`, the offset to read from (earliest) and the end to read to.
async fn bounds(
    common: &CommonArgs,
    topic: &str,
) -> anyhow::Result<(Vec<TopicPartition>, BTreeMap<TopicPartition, i64>)> {
    let mut admin = output::connect(common).await?;
    let partitions = admin.partitions_of(topic).await?;
    if partitions.is_empty() {
        return Err(output::not_found(format!(
            "topic `{topic}` does not exist; list topics with `sluice topic list`"
        )));
    }
    let ends = admin.list_offsets(&partitions, LATEST).await?;
    let starts = admin.list_offsets(&partitions, EARLIEST).await?;
    let partitions: Vec<TopicPartition> = partitions
        .into_iter()
        .map(|(topic, partition)| TopicPartition::new(topic, partition))
        .collect();
    let ends = ends
        .into_iter()
        .filter(|(tp, end)| starts.get(tp).is_some_and(|start| start < end))
        .map(|((topic, partition), end)| (TopicPartition::new(topic, partition), end))
        .collect();
    Ok((partitions, ends))
}

/// Polls until every partition's position reaches `ends` (or `limit` records were read).
async fn read_to(
    consumer: &mut Consumer,
    ends: &BTreeMap<TopicPartition, i64>,
    limit: Option<usize>,
) -> anyhow::Result<Vec<ConsumerRecord>> {
    let mut records = Vec::new();
    let mut empty_polls = 0;
    loop {
        let done = ends.iter().all(|(tp, end)| {
            consumer
                .positions()
                .get(tp)
                .is_some_and(|position| position >= end)
        });
        if done || limit.is_some_and(|limit| records.len() >= limit) {
            break;
        }
        let polled = consumer.poll(Duration::from_millis(POLL_MS)).await?;
        if polled.is_empty() {
            empty_polls += 1;
            anyhow::ensure!(
                empty_polls < EMPTY_POLLS_MAX,
                "no records arrived for {} s before the end of the topic was reached",
                u64::from(EMPTY_POLLS_MAX) * POLL_MS / 1000
            );
            continue;
        }
        empty_polls = 0;
        records.extend(polled.into_iter().filter(|r| {
            ends.get(&r.topic_partition())
                .is_some_and(|end| r.offset < *end)
        }));
    }
    if let Some(limit) = limit {
        records.truncate(limit);
    }
    Ok(records)
}

fn text(bytes: Option<&[u8]>) -> String {
    bytes.map_or_else(String::new, |b| String::from_utf8_lossy(b).into_owned())
}

async fn list(common: &CommonArgs, topic: &str, limit: Option<usize>) -> anyhow::Result<()> {
    let (partitions, ends) = bounds(common, topic).await?;
    let mut records = Vec::new();
    if !ends.is_empty() {
        let mut consumer = Consumer::connect(&common.bootstrap, ConsumerOptions::default())
            .await
            .context("cannot connect a consumer")?;
        consumer.assign(partitions.clone())?;
        consumer.seek_to_beginning(&partitions).await?;
        records = read_to(&mut consumer, &ends, limit).await?;
        consumer.close().await?;
    }
    match common.output {
        Output::Json => {
            let rows: Vec<serde_json::Value> = records
                .iter()
                .map(|record| {
                    let origin = dead_letter_headers(record).ok();
                    json!({
                        "partition": record.partition,
                        "offset": record.offset,
                        "key": record.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
                        "value": record.value.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()),
                        "original_topic": origin.as_ref().map(|o| o.topic.clone()),
                        "original_partition": origin.as_ref().map(|o| o.partition),
                        "original_offset": origin.as_ref().map(|o| o.offset),
                        "attempts": origin.as_ref().map(|o| o.attempts),
                        "error": origin.as_ref().map(|o| o.error.clone()),
                        "failed_at_ms": origin.as_ref().map(|o| o.failed_at_ms),
                    })
                })
                .collect();
            print_json(&json!({ "topic": topic, "records": rows }))
        }
        Output::Table => {
            let rows = records
                .iter()
                .map(|record| {
                    let (origin, attempts, error) = match dead_letter_headers(record) {
                        Ok(o) => (
                            format!("{}-{}@{}", o.topic, o.partition, o.offset),
                            o.attempts.to_string(),
                            o.error,
                        ),
                        Err(e) => ("-".to_string(), "-".to_string(), e.to_string()),
                    };
                    let mut error: String = error.replace('\n', " ");
                    if error.chars().count() > 60 {
                        error = error.chars().take(57).collect::<String>() + "...";
                    }
                    vec![
                        record.partition.to_string(),
                        record.offset.to_string(),
                        origin,
                        attempts,
                        text(record.key.as_deref()),
                        error,
                    ]
                })
                .collect();
            print_table(
                &["PARTITION", "OFFSET", "FROM", "ATTEMPTS", "KEY", "ERROR"],
                rows,
            );
            Ok(())
        }
    }
}

async fn replay(
    common: &CommonArgs,
    topic: &str,
    to: Option<&str>,
    group: &str,
) -> anyhow::Result<()> {
    let (partitions, ends) = bounds(common, topic).await?;
    let options = ConsumerOptions {
        group_id: Some(group.to_string()),
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerOptions::default()
    };
    let mut consumer = Consumer::connect(&common.bootstrap, options)
        .await
        .context("cannot connect a consumer")?;
    // Manual assignment: the group only stores how far replay got.
    consumer.assign(partitions)?;
    let records = read_to(&mut consumer, &ends, None).await?;
    let producer = Producer::connect(&common.bootstrap, ProducerOptions::default())
        .await
        .context("cannot connect a producer")?;
    let mut deliveries = Vec::with_capacity(records.len());
    for record in &records {
        let replayed = replay_record(record, to).with_context(|| {
            format!(
                "{}-{}@{} is not a dead letter; pass --to TOPIC to send it somewhere",
                record.topic, record.partition, record.offset
            )
        })?;
        deliveries.push(producer.send(replayed).await?);
    }
    let mut per_topic: BTreeMap<String, u64> = BTreeMap::new();
    for (delivery, record) in deliveries.into_iter().zip(&records) {
        delivery.await.context(
            "a replayed record was not acknowledged; nothing was committed, run replay again",
        )?;
        let target = to
            .map(str::to_string)
            .or_else(|| dead_letter_headers(record).ok().map(|origin| origin.topic));
        *per_topic.entry(target.unwrap_or_default()).or_default() += 1;
    }
    producer.close().await;
    consumer.commit_records(&records).await?;
    consumer.close().await?;
    match common.output {
        Output::Json => print_json(&json!({
            "topic": topic,
            "replayed": records.len(),
            "to": per_topic,
        })),
        Output::Table => {
            eprintln!(
                "replayed {} record(s) from {topic}{}",
                records.len(),
                per_topic
                    .iter()
                    .map(|(t, n)| format!(", {n} to {t}"))
                    .collect::<String>()
            );
            Ok(())
        }
    }
}
