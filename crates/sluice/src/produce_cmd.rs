//! `sluice produce TOPIC`: one record per line from stdin or a file, through the SDK
//! producer (batching, idempotence, retries), against any Kafka-compatible broker.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sluice_client::{ClientError, Producer, ProducerOptions, ProducerRecord};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::output::{self, Output};

#[derive(Clone, Copy, ValueEnum)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl From<Codec> for kafka_protocol::records::Compression {
    fn from(codec: Codec) -> Self {
        use kafka_protocol::records::Compression;
        match codec {
            Codec::None => Compression::None,
            Codec::Gzip => Compression::Gzip,
            Codec::Snappy => Compression::Snappy,
            Codec::Lz4 => Compression::Lz4,
            Codec::Zstd => Compression::Zstd,
        }
    }
}

#[derive(Args)]
pub struct ProduceArgs {
    /// Topic to produce to (auto-created if the broker allows it).
    topic: String,
    /// Bootstrap broker, host:port (comma-separated for several).
    #[arg(
        long,
        short = 'b',
        default_value = "127.0.0.1:9092",
        env = "SLUICE_BOOTSTRAP"
    )]
    bootstrap: String,
    /// Read records from this file instead of stdin (shows a progress bar).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Split each line into key and value at the first SEP (a line without SEP has no key).
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// The same key for every record.
    #[arg(long, conflicts_with = "key_separator")]
    key: Option<String>,
    /// A header on every record, KEY=VALUE; repeatable.
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE")]
    headers: Vec<String>,
    /// Produce to this partition instead of the partitioner's choice.
    #[arg(long)]
    partition: Option<i32>,
    /// Acknowledgement: 0 (none), 1 (leader) or all (every in-sync replica; needed for
    /// idempotence).
    #[arg(long, default_value = "all", value_parser = ["0", "1", "all", "-1"])]
    acks: String,
    /// Compression codec of the record batches.
    #[arg(long, value_enum, default_value_t = Codec::None)]
    compression: Codec,
    /// How long a batch waits for more records before it is sent.
    #[arg(long, default_value_t = 5)]
    linger_ms: u64,
    /// Summary format: a line on stderr, or JSON on stdout.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// What the delivery callbacks report.
#[derive(Default)]
struct Tally {
    delivered: u64,
    bytes: u64,
    partitions: BTreeSet<i32>,
    failed: u64,
    first_error: Option<ClientError>,
}

/// An error message that says what to do.
fn explain(error: &ClientError, bootstrap: &str, topic: &str) -> String {
    match error {
        ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Timeout(..) => {
            format!("{} [{error}]", output::unreachable_message(bootstrap))
        }
        ClientError::Kafka { code: 10, .. } => format!(
            "{error}: a record is larger than the topic's max.message.bytes; raise it \
             (e.g. `sluice topic alter {topic} --set max.message.bytes=...`) or send smaller \
             records"
        ),
        ClientError::Kafka { code: 3, .. } => format!(
            "{error}: check the topic name and --partition (see `sluice topic describe \
             {topic}`); if the topic is missing and the broker does not auto-create topics, \
             create it with `sluice topic create {topic}`"
        ),
        other => other.to_string(),
    }
}

fn parse_headers(headers: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    headers
        .iter()
        .map(|h| match h.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("--header expects KEY=VALUE, got `{h}`"),
        })
        .collect()
}

/// Splits `line` at the first `separator` into (key, value).
fn split_line<'a>(line: &'a [u8], separator: &[u8]) -> (Option<&'a [u8]>, &'a [u8]) {
    if separator.is_empty() {
        return (None, line);
    }
    match line
        .windows(separator.len())
        .position(|window| window == separator)
    {
        Some(at) => (Some(&line[..at]), &line[at + separator.len()..]),
        None => (None, line),
    }
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let headers = parse_headers(&args.headers)?;
    let acks = match args.acks.as_str() {
        "0" => 0,
        "1" => 1,
        _ => -1,
    };
    let options = ProducerOptions {
        client_id: "sluice-produce".to_string(),
        acks,
        compression: args.compression.into(),
        linger_ms: args.linger_ms,
        max_block_ms: 30_000,
        ..ProducerOptions::default()
    };
    let (input, progress): (Box<dyn AsyncRead + Unpin + Send>, Option<ProgressBar>) =
        match &args.file {
            Some(path) => {
                let file = tokio::fs::File::open(path)
                    .await
                    .with_context(|| format!("cannot open {}", path.display()))?;
                let length = file.metadata().await.map(|m| m.len()).unwrap_or(0);
                let bar = ProgressBar::new(length);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                (Box::new(file), Some(bar))
            }
            None => (Box::new(tokio::io::stdin()), None),
        };
    let producer = Producer::connect(&args.bootstrap, options)
        .await
        .map_err(|e| output::client_failure(&e, explain(&e, &args.bootstrap, &args.topic)))?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    let separator = args.key_separator.as_deref().map(str::as_bytes);
    let mut sent: u64 = 0;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .await
            .context("cannot read the input")?;
        if read == 0 {
            break;
        }
        if let Some(bar) = &progress {
            bar.inc(read as u64);
        }
        let mut content: &[u8] = &line;
        if let Some(stripped) = content.strip_suffix(b"\n") {
            content = stripped;
        }
        if let Some(stripped) = content.strip_suffix(b"\r") {
            content = stripped;
        }
        let (key, value) = match separator {
            Some(separator) => split_line(content, separator),
            None => (args.key.as_deref().map(str::as_bytes), content),
        };
        let value_bytes = value.len() as u64 + key.map_or(0, |k| k.len() as u64);
        let mut record = ProducerRecord::new(args.topic.clone(), value.to_vec());
        if let Some(key) = key {
            record = record.with_key(key.to_vec());
        }
        if let Some(partition) = args.partition {
            record = record.with_partition(partition);
        }
        for (k, v) in &headers {
            record = record.with_header(k.clone(), v.clone());
        }
        let tally_for_callback = Arc::clone(&tally);
        let accepted = producer
            .send_with_callback(record, move |result| {
                let mut tally = tally_for_callback.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(metadata) => {
                        tally.delivered += 1;
                        tally.bytes += value_bytes;
                        tally.partitions.insert(metadata.partition);
                    }
                    Err(error) => {
                        tally.failed += 1;
                        if tally.first_error.is_none() {
                            tally.first_error = Some(error);
                        }
                    }
                }
            })
            .await;
        if let Err(error) = accepted {
            producer.close().await;
            if let Some(bar) = &progress {
                bar.abandon();
            }
            let message = format!(
                "record {} was not accepted: {}",
                sent + 1,
                explain(&error, &args.bootstrap, &args.topic)
            );
            return Err(output::client_failure(&error, message));
        }
        sent += 1;
    }
    producer.close().await;
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
    let partitions: Vec<i32> = tally.partitions.iter().copied().collect();
    match args.output {
        Output::Json => println!(
            "{}",
            json!({
                "topic": args.topic,
                "records": tally.delivered,
                "bytes": tally.bytes,
                "partitions": partitions,
                "failed": tally.failed,
                "error": tally.first_error.as_ref().map(|e| explain(e, &args.bootstrap, &args.topic)),
            })
        ),
        Output::Table => eprintln!(
            "produced {} record(s), {} byte(s) to {} (partitions {:?}){}",
            tally.delivered,
            tally.bytes,
            args.topic,
            partitions,
            if tally.failed > 0 {
                format!(", {} failed", tally.failed)
            } else {
                String::new()
            }
        ),
    }
    if let Some(error) = tally.first_error {
        let message = format!(
            "{} of {sent} record(s) failed; first error: {}",
            tally.failed,
            explain(&error, &args.bootstrap, &args.topic)
        );
        return Err(output::client_failure(&error, message));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_at_the_first_separator() {
        assert_eq!(split_line(b"k1:v:1", b":"), (Some(&b"k1"[..]), &b"v:1"[..]));
        assert_eq!(split_line(b"no-key", b":"), (None, &b"no-key"[..]));
        assert_eq!(split_line(b"a::b", b"::"), (Some(&b"a"[..]), &b"b"[..]));
        assert_eq!(split_line(b":v", b":"), (Some(&b""[..]), &b"v"[..]));
    }

    #[test]
    fn headers_need_key_equals_value() {
        assert_eq!(
            parse_headers(&["a=1".to_string(), "b=x=y".to_string()]).unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "x=y".into())]
        );
        assert!(parse_headers(&["novalue".to_string()]).is_err());
        assert!(parse_headers(&["=v".to_string()]).is_err());
    }
}
