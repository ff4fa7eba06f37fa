//! `sluice consume TOPIC`: prints records from a group (committing after printing) or
//! from explicit offsets, as plain text (Kafka console consumer style) or JSON lines.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};
use sluice_client::consumer::{AutoOffsetReset, Consumer, ConsumerOptions};
use sluice_client::{Admin, ConsumerRecord, Header, TopicPartition};

#[derive(Clone, Copy, ValueEnum, Default, PartialEq, Eq, Debug)]
pub enum Format {
    /// The value, with `Partition:`, `Offset:`, key and headers before it when asked.
    #[default]
    Plain,
    /// One JSON object per record: topic, partition, offset, timestamp_ms, key, value,
    /// headers (bytes that are not UTF-8 are base64 with an `*_encoding` field).
    Json,
}

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    /// The topic to read.
    topic: String,
    /// Bootstrap broker, host:port.
    #[arg(
        long,
        short = 'b',
        default_value = "127.0.0.1:9092",
        env = "SLUICE_BOOTSTRAP"
    )]
    bootstrap: String,
    /// Consumer group: partitions are shared with the group's other members and offsets
    /// are committed after the records are printed.
    #[arg(long, short = 'g')]
    group: Option<String>,
    /// Start at the oldest record (for a group: where it has no committed offset).
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Start at this offset (with --partition).
    #[arg(long, requires = "partition")]
    offset: Option<i64>,
    /// Read only this partition (no group membership; a group only stores offsets).
    #[arg(long)]
    partition: Option<i32>,
    /// Exit after printing this many records.
    #[arg(long, short = 'n')]
    max_messages: Option<u64>,
    /// Exit when no record arrived for this long (milliseconds) while partitions were
    /// assigned.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = Format::Plain)]
    format: Format,
    /// Plain format: print the key before the value.
    #[arg(long)]
    print_key: bool,
    /// Plain format: print the headers before the value.
    #[arg(long)]
    print_headers: bool,
    /// Plain format: print the partition.
    #[arg(long)]
    print_partition: bool,
    /// Plain format: print the offset.
    #[arg(long)]
    print_offset: bool,
    /// Instead of printing, run this shell command per record (value on stdin; topic,
    /// partition, offset and key in SLUICE_TOPIC, SLUICE_PARTITION, SLUICE_OFFSET,
    /// SLUICE_KEY). A non-zero exit is a failure: retried, then parked on --dlq. Needs -g.
    #[arg(long, value_name = "CMD", requires = "group")]
    exec: Option<String>,
    /// With --exec: attempts per record (the first included) before it is dead-lettered.
    #[arg(long, default_value_t = 3, requires = "exec")]
    max_attempts: u32,
    /// With --exec: wait before the first retry, doubling per retry up to 10 s.
    #[arg(long, default_value_t = 100, requires = "exec")]
    retry_backoff_ms: u64,
    /// With --exec: the dead-letter topic [default: TOPIC.dlq].
    #[arg(long, value_name = "TOPIC", requires = "exec")]
    dlq: Option<String>,
    /// With --exec: commands running at once (records with the same key always run in
    /// order, one at a time).
    #[arg(long, default_value_t = 4, requires = "exec")]
    concurrency: usize,
    /// With --exec: a command running longer is killed and counts as a failure.
    #[arg(long, default_value_t = 60_000, requires = "exec")]
    exec_timeout_ms: u64,
}

/// The longest a single poll waits, so idle timeouts and Ctrl-C are noticed promptly.
const POLL_MS_MAX: u64 = 500;

pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let partitions = topic_partitions(&args).await?;
    let options = ConsumerOptions {
        group_id: args.group.clone(),
        client_id: "sluice-consume".to_string(),
        auto_offset_reset: if args.from_beginning {
            AutoOffsetReset::Earliest
        } else {
            AutoOffsetReset::Latest
        },
        ..ConsumerOptions::default()
    };
    let mut consumer = Consumer::connect(&args.bootstrap, options)
        .await
        .with_context(|| crate::output::unreachable_message(&args.bootstrap))?;
    if let Some(command) = &args.exec {
        let plan = crate::exec_cmd::ExecPlan {
            command: command.clone(),
            topic: args.topic.clone(),
            bootstrap: args.bootstrap.clone(),
            max_attempts: args.max_attempts,
            retry_backoff_ms: args.retry_backoff_ms,
            dlq: args.dlq.clone(),
            concurrency: args.concurrency,
            exec_timeout_ms: args.exec_timeout_ms,
            max_messages: args.max_messages,
            timeout_ms: args.timeout_ms,
        };
        return crate::exec_cmd::run(consumer, plan).await;
    }
    match (&args.group, args.partition) {
        (Some(_), None) => consumer.subscribe(&[args.topic.as_str()]).await?,
        _ => {
            consumer.assign(partitions.clone())?;
            if let Some(offset) = args.offset {
                for tp in &partitions {
                    consumer.seek(tp, offset)?;
                }
            } else if args.from_beginning && args.group.is_none() {
                consumer.seek_to_beginning(&partitions).await?;
            }
        }
    }
    let result = consume(&mut consumer, &args).await;
    let closed = consumer.close().await;
    result?;
    closed?;
    Ok(())
}

/// The partitions to read; fails with what to do when the topic or partition is missing.
async fn topic_partitions(args: &ConsumeArgs) -> anyhow::Result<Vec<TopicPartition>> {
    let mut admin = Admin::connect(&args.bootstrap, Duration::from_secs(30))
        .await
        .with_context(|| crate::output::unreachable_message(&args.bootstrap))?;
    let all = admin.partitions_of(&args.topic).await.with_context(|| {
        format!(
            "topic {} is not readable; does it exist? (`sluice topic list`)",
            args.topic
        )
    })?;
    let mut partitions: Vec<TopicPartition> = all
        .into_iter()
        .map(|(topic, partition)| TopicPartition::new(topic, partition))
        .collect();
    if let Some(wanted) = args.partition {
        partitions.retain(|tp| tp.partition == wanted);
        if partitions.is_empty() {
            bail!(
                "topic {} has no partition {wanted} (`sluice topic describe {}` lists them)",
                args.topic,
                args.topic
            );
        }
    }
    Ok(partitions)
}

async fn consume(consumer: &mut Consumer, args: &ConsumeArgs) -> anyhow::Result<()> {
    let mut printed: u64 = 0;
    let mut last_record = Instant::now();
    let stdout = std::io::stdout();
    loop {
        let Some(wait_ms) = crate::output::poll_wait_ms(last_record, args.timeout_ms, POLL_MS_MAX)
        else {
            return Ok(());
        };
        let mut records = tokio::select! {
            polled = consumer.poll(Duration::from_millis(wait_ms)) => polled?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        if records.is_empty() {
            // Idle time counts from having partitions: joining a group (Kafka delays the
            // first rebalance by group.initial.rebalance.delay.ms) is not idleness.
            if consumer.assignment().is_empty() {
                last_record = Instant::now();
            }
            continue;
        }
        last_record = Instant::now();
        if let Some(max) = args.max_messages {
            let left = usize::try_from(max.saturating_sub(printed)).unwrap_or(usize::MAX);
            records.truncate(left);
        }
        {
            let mut out = stdout.lock();
            for record in &records {
                let line = match args.format {
                    Format::Plain => plain(record, args),
                    Format::Json => json_line(record).to_string(),
                };
                if let Err(error) = writeln!(out, "{line}") {
                    if error.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(error).context("cannot write to stdout");
                }
            }
            if let Err(error) = out.flush() {
                if error.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(error).context("cannot write to stdout");
            }
        }
        printed += records.len() as u64;
        // Commit after printing: a crash before this line prints the records again.
        if args.group.is_some() {
            consumer.commit_records(&records).await.with_context(|| {
                format!(
                    "cannot commit offsets for group {}",
                    args.group.as_deref().unwrap_or("")
                )
            })?;
        }
        if args.max_messages.is_some_and(|max| printed >= max) {
            return Ok(());
        }
    }
}

fn text(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "null".to_string(),
        Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Kafka console consumer layout: `Partition:P\tOffset:O\tKEY\tHEADERS\tVALUE`, each part
/// only when asked for.
fn plain(record: &ConsumerRecord, args: &ConsumeArgs) -> String {
    let mut parts = Vec::new();
    if args.print_partition {
        parts.push(format!("Partition:{}", record.partition));
    }
    if args.print_offset {
        parts.push(format!("Offset:{}", record.offset));
    }
    if args.print_key {
        parts.push(text(record.key.as_deref()));
    }
    if args.print_headers {
        if record.headers.is_empty() {
            parts.push("NO_HEADERS".to_string());
        } else {
            parts.push(
                record
                    .headers
                    .iter()
                    .map(|h| format!("{}:{}", h.key, text(h.value.as_deref())))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
    }
    parts.push(text(record.value.as_deref()));
    parts.join("\t")
}

/// Adds `name` (UTF-8 text, or base64 with `name_encoding: "base64"`) to `object`.
fn put_bytes(object: &mut serde_json::Map<String, Value>, name: &str, bytes: Option<&[u8]>) {
    match bytes {
        None => {
            object.insert(name.to_string(), Value::Null);
        }
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => {
                object.insert(name.to_string(), Value::String(text.to_string()));
            }
            Err(_) => {
                object.insert(name.to_string(), Value::String(base64(bytes)));
                object.insert(format!("{name}_encoding"), json!("base64"));
            }
        },
    }
}

fn json_line(record: &ConsumerRecord) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("topic".into(), json!(record.topic));
    object.insert("partition".into(), json!(record.partition));
    object.insert("offset".into(), json!(record.offset));
    object.insert("timestamp_ms".into(), json!(record.timestamp_ms));
    put_bytes(&mut object, "key", record.key.as_deref());
    put_bytes(&mut object, "value", record.value.as_deref());
    let headers: Vec<Value> = record.headers.iter().map(header_json).collect();
    object.insert("headers".into(), Value::Array(headers));
    Value::Object(object)
}

fn header_json(header: &Header) -> Value {
    let mut object = serde_json::Map::new();
    object.insert("key".into(), json!(header.key));
    put_bytes(&mut object, "value", header.value.as_deref());
    Value::Object(object)
}

/// Standard base64 with padding (RFC 4648).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition: 2,
            offset: 7,
            timestamp_ms: 1234,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(&[0xff, 0x00])),
            headers: vec![
                Header::new("h", "v"),
                Header {
                    key: "n".into(),
                    value: None,
                },
            ],
        }
    }

    #[test]
    fn json_flags_binary_values_as_base64() {
        let line = json_line(&record());
        assert_eq!(line["key"], "k");
        assert_eq!(line["value"], "/wA=");
        assert_eq!(line["value_encoding"], "base64");
        assert!(line.get("key_encoding").is_none());
        assert_eq!(line["partition"], 2);
        assert_eq!(line["offset"], 7);
        assert_eq!(line["timestamp_ms"], 1234);
        assert_eq!(line["headers"][0]["key"], "h");
        assert_eq!(line["headers"][0]["value"], "v");
        assert_eq!(line["headers"][1]["value"], Value::Null);
    }

    #[test]
    fn plain_prints_asked_fields_in_kafka_order() {
        let args = ConsumeArgs {
            topic: "t".into(),
            bootstrap: String::new(),
            group: None,
            from_beginning: false,
            offset: None,
            partition: None,
            max_messages: None,
            timeout_ms: None,
            format: Format::Plain,
            print_key: true,
            print_headers: true,
            print_partition: true,
            print_offset: true,
            exec: None,
            max_attempts: 3,
            retry_backoff_ms: 100,
            dlq: None,
            concurrency: 4,
            exec_timeout_ms: 60_000,
        };
        let mut r = record();
        r.value = Some(Bytes::from_static(b"hello"));
        assert_eq!(
            plain(&r, &args),
            "Partition:2\tOffset:7\tk\th:v,n:null\thello"
        );
    }
}
