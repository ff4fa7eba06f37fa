//! `sluice bench produce|consume|e2e`: load generator and latency meter for any
//! Kafka-compatible broker. It speaks only standard APIs (Metadata, CreateTopics, Produce,
//! Fetch, ListOffsets) through `sluice-client`'s batch producer and fetcher. See the crate
//! README for what each number means.

mod consume;
mod pacing;
mod produce;
mod stats;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kafka_protocol::records::Compression;
use sluice_client::admin::{EARLIEST, LATEST};
use sluice_client::{ensure_topic, Admin, FetchConfig, ProducerConfig, TopicLayout};

use consume::{run_consumer, ConsumePlan, StopCondition};
use produce::{run_producers, ProducePlan};
use stats::{LatencySummary, Report};

/// Messages produced when neither `--messages` nor `--duration` is given.
const DEFAULT_MESSAGES: u64 = 100_000;
/// How often the progress bar is refreshed.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Produce messages and measure throughput and send-to-ack latency.
    Produce(Options),
    /// Read the topic from the start (e.g. what `produce` left) and measure throughput.
    Consume(Options),
    /// Produce and consume together; latency from each record's send stamp to its receipt.
    E2e(Options),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    fn compression(self) -> Compression {
        match self {
            Codec::None => Compression::None,
            Codec::Gzip => Compression::Gzip,
            Codec::Snappy => Compression::Snappy,
            Codec::Lz4 => Compression::Lz4,
            Codec::Zstd => Compression::Zstd,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

fn parse_acks(value: &str) -> Result<i16, String> {
    match value {
        "0" => Ok(0),
        "1" => Ok(1),
        "all" | "-1" => Ok(-1),
        other => Err(format!("acks must be 0, 1 or all, not `{other}`")),
    }
}

fn acks_name(acks: i16) -> String {
    if acks < 0 {
        "all".to_string()
    } else {
        acks.to_string()
    }
}

#[derive(Args, Clone, Debug)]
struct Options {
    /// Bootstrap address of any Kafka-compatible broker, host:port.
    #[arg(short = 'b', long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Topic; created with `--partitions` if missing.
    #[arg(long, default_value = "sluice-bench")]
    topic: String,
    /// Partitions of a topic the bench creates (an existing topic keeps its count).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    partitions: i32,
    /// Replication factor of a topic the bench creates; -1: the broker default.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    replication_factor: i16,
    /// Bytes per message value.
    #[arg(long, default_value_t = 1024)]
    message_bytes: usize,
    /// Messages to produce (consume: at most this many) [default: 100000 for produce and
    /// e2e unless --duration; consume: everything in the topic].
    #[arg(long)]
    messages: Option<u64>,
    /// Run for this many seconds instead of a message count.
    #[arg(long)]
    duration: Option<f64>,
    /// 0 (no response), 1 (leader) or all.
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    acks: i16,
    #[arg(long, value_enum, default_value = "none")]
    compression: Codec,
    /// Target messages per second over all producers; 0: as fast as possible. A fixed
    /// rate turns on the coordinated-omission correction.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Concurrent producers, each with its own connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    producers: u16,
    /// Bytes of values per batch (Kafka's `batch.size`).
    #[arg(long, default_value_t = 16_384)]
    batch_bytes: usize,
    /// With `--rate`: how long a batch waits for more records after its first one.
    #[arg(long, default_value_t = 1)]
    linger_ms: u64,
    /// Produce requests in flight per producer connection (consumers keep one Fetch per
    /// partition in flight).
    #[arg(long, default_value_t = 5)]
    max_in_flight: usize,
    /// Connect and request timeout, also the wait for the last e2e messages.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Print one JSON object with every number (no progress bar).
    #[arg(long)]
    json: bool,
}

impl Options {
    fn validate(&self) -> anyhow::Result<()> {
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            bail!("--rate must be a non-negative number");
        }
        if let Some(duration) = self.duration {
            if !(duration > 0.0 && duration.is_finite()) {
                bail!("--duration must be a positive number of seconds");
            }
        }
        if self.max_in_flight == 0 {
            bail!("--max-in-flight must be at least 1");
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    fn producer_config(&self) -> ProducerConfig {
        ProducerConfig {
            acks: self.acks,
            compression: self.compression.compression(),
            max_in_flight: self.max_in_flight,
            timeout: self.timeout(),
        }
    }

    fn fetch_config(&self, layout: &TopicLayout) -> FetchConfig {
        FetchConfig {
            // One fetch per partition (consume) or per leader (e2e) is outstanding.
            max_in_flight: layout.leaders.len().max(1),
            timeout: self.timeout().max(Duration::from_secs(5)),
            ..FetchConfig::default()
        }
    }

    fn produce_plan(&self, epoch: Instant, start: Instant) -> ProducePlan {
        let deadline = self.duration.map(|s| start + Duration::from_secs_f64(s));
        let messages = match (self.messages, deadline) {
            (Some(messages), _) => Some(messages),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_MESSAGES),
        };
        ProducePlan {
            epoch,
            start,
            messages,
            deadline,
            rate_msgs_per_sec: self.rate,
            producers: usize::from(self.producers),
            message_bytes: self.message_bytes,
            batch_bytes: self.batch_bytes,
            linger: Duration::from_millis(self.linger_ms),
            compression: self.compression.compression(),
        }
    }

    fn report(&self, mode: &'static str, layout: &TopicLayout) -> Report {
        Report {
            mode,
            bootstrap: self.bootstrap.clone(),
            topic: self.topic.clone(),
            partitions: layout.leaders.len(),
            message_bytes: self.message_bytes,
            acks: acks_name(self.acks),
            compression: self.compression.name().to_string(),
            producers: usize::from(self.producers),
            target_rate_msgs_per_sec: self.rate,
            coordinated_omission_corrected: self.rate > 0.0 && mode != "consume",
            messages: 0,
            produced_messages: 0,
            bytes: 0,
            elapsed_sec: 0.0,
            msgs_per_sec: 0.0,
            mb_per_sec: 0.0,
            latency: LatencySummary::of(&stats::latency_histogram()),
            errors: 0,
            first_error: None,
        }
    }
}

/// Progress shared by the workers and the progress bar.
#[derive(Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
}

/// A progress bar on stderr, hidden with `--json` or when stderr is not a terminal; its
/// refresh task ends when the returned guard drops.
struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(
        options: &Options,
        label: &'static str,
        total: Option<u64>,
        counters: Arc<Counters>,
    ) -> Progress {
        let visible = !options.json && std::io::stderr().is_terminal();
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new_spinner(),
        };
        bar.set_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let template = if total.is_some() {
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} msgs {msg}"
        } else {
            "{prefix} [{elapsed_precise}] {spinner} {pos} msgs {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_prefix(label);
        let started = Instant::now();
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_INTERVAL).await;
                let messages = counters.messages.load(Ordering::Relaxed);
                let bytes = counters.bytes.load(Ordering::Relaxed);
                let seconds = started.elapsed().as_secs_f64();
                shown.set_position(messages);
                shown.set_message(format!(
                    "{:.0} msgs/s {:.1} MB/s",
                    stats::per_second(messages, seconds),
                    stats::per_second(bytes, seconds) / 1e6
                ));
            }
        });
        Progress { bar, task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
        self.bar.finish_and_clear();
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let (mode, options) = match args.mode {
        Mode::Produce(o) => ("produce", o),
        Mode::Consume(o) => ("consume", o),
        Mode::E2e(o) => ("e2e", o),
    };
    options.validate()?;
    let report = match mode {
        "produce" => bench_produce(&options).await?,
        "consume" => bench_consume(&options).await?,
        _ => bench_e2e(&options).await?,
    };
    if options.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    if report.errors > 0 {
        bail!(
            "{} request(s) failed; first: {}",
            report.errors,
            report.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(())
}

async fn topic_layout(options: &Options) -> anyhow::Result<TopicLayout> {
    ensure_topic(
        &options.bootstrap,
        &options.topic,
        options.partitions,
        options.replication_factor,
        options.timeout(),
    )
    .await
    .with_context(|| format!("cannot set up topic {}", options.topic))
}

async fn offsets(
    options: &Options,
    layout: &TopicLayout,
    at: i64,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let mut admin = Admin::connect(&options.bootstrap, options.timeout()).await?;
    let partitions: Vec<(String, i32)> = layout
        .partitions()
        .into_iter()
        .map(|p| (layout.topic.clone(), p))
        .collect();
    Ok(admin
        .list_offsets(&partitions, at)
        .await?
        .into_iter()
        .map(|((_, partition), offset)| (partition, offset))
        .collect())
}

async fn bench_produce(options: &Options) -> anyhow::Result<Report> {
    let layout = topic_layout(options).await?;
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let plan = options.produce_plan(start, start);
    let progress = Progress::start(options, "produce", plan.messages, Arc::clone(&counters));
    let outcome = run_producers(&layout, &options.producer_config(), &plan, counters).await?;
    let elapsed_sec = start.elapsed().as_secs_f64();
    drop(progress);
    Ok(Report {
        messages: outcome.messages,
        produced_messages: outcome.messages,
        bytes: outcome.bytes,
        elapsed_sec,
        latency: LatencySummary::of(&outcome.histogram),
        errors: outcome.errors,
        first_error: outcome.first_error,
        ..options.report("produce", &layout)
    }
    .with_throughput())
}

async fn bench_consume(options: &Options) -> anyhow::Result<Report> {
    let layout = topic_layout(options).await?;
    let start_offsets = offsets(options, &layout, EARLIEST).await?;
    let end_offsets = offsets(options, &layout, LATEST).await?;
    let available: u64 = end_offsets
        .iter()
        .map(|(p, end)| {
            let start = start_offsets.get(p).copied().unwrap_or(0);
            u64::try_from(end - start).unwrap_or(0)
        })
        .sum();
    let target = options.messages.map_or(available, |m| m.min(available));
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let plan = ConsumePlan {
        epoch: start,
        start_offsets,
        end_offsets: Some(end_offsets),
        end_to_end: false,
        deadline: options.duration.map(|s| start + Duration::from_secs_f64(s)),
    };
    let stop = Arc::new(StopCondition::new(Some(target)));
    let progress = Progress::start(options, "consume", Some(target), Arc::clone(&counters));
    let outcome = run_consumer(
        &layout,
        &options.fetch_config(&layout),
        &plan,
        stop,
        counters,
    )
    .await?;
    let elapsed_sec = start.elapsed().as_secs_f64();
    drop(progress);
    Ok(Report {
        messages: outcome.messages,
        produced_messages: outcome.messages,
        bytes: outcome.bytes,
        elapsed_sec,
        latency: LatencySummary::of(&outcome.histogram),
        errors: outcome.errors,
        first_error: outcome.first_error,
        coordinated_omission_corrected: false,
        ..options.report("consume", &layout)
    }
    .with_throughput())
}

async fn bench_e2e(options: &Options) -> anyhow::Result<Report> {
    if options.message_bytes < produce::STAMP_BYTES {
        bail!(
            "e2e needs --message-bytes of at least {} (the send stamp)",
            produce::STAMP_BYTES
        );
    }
    let layout = topic_layout(options).await?;
    let start_offsets = offsets(options, &layout, LATEST).await?;
    let epoch = Instant::now();
    let consumed = Arc::new(Counters::default());
    let stop = Arc::new(StopCondition::new(None));
    let consume_plan = ConsumePlan {
        epoch,
        start_offsets,
        end_offsets: None,
        end_to_end: true,
        deadline: None,
    };
    let consumer = {
        let (layout, config) = (layout.clone(), options.fetch_config(&layout));
        let (stop, consumed) = (Arc::clone(&stop), Arc::clone(&consumed));
        tokio::spawn(
            async move { run_consumer(&layout, &config, &consume_plan, stop, consumed).await },
        )
    };
    let produced = Arc::new(Counters::default());
    let start = Instant::now();
    let plan = options.produce_plan(epoch, start);
    let progress = Progress::start(options, "e2e", plan.messages, Arc::clone(&consumed));
    let production = run_producers(
        &layout,
        &options.producer_config(),
        &plan,
        Arc::clone(&produced),
    )
    .await;
    // Whatever happened, the consumer now knows how many messages to wait for.
    let produced_messages = production.as_ref().map_or(0, |o| o.messages);
    stop.target.store(produced_messages, Ordering::Relaxed);
    let drain = {
        let stop = Arc::clone(&stop);
        let timeout = options.timeout();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            stop.abort.store(true, Ordering::Relaxed);
        })
    };
    let consumption = consumer.await;
    drain.abort();
    drop(progress);
    let production = production?;
    let consumption = consumption.context("the consumer task failed")??;
    // Up to the last receipt: the consumer may idle in a long poll after it.
    let elapsed_sec = consumption
        .last_receipt
        .unwrap_or_else(Instant::now)
        .saturating_duration_since(start)
        .as_secs_f64();
    let mut errors = production.errors + consumption.errors;
    let mut first_error = production.first_error.or(consumption.first_error);
    if consumption.messages != production.messages {
        errors += 1;
        first_error.get_or_insert_with(|| {
            format!(
                "consumed {} messages but {} were acknowledged",
                consumption.messages, production.messages
            )
        });
    }
    Ok(Report {
        messages: consumption.messages,
        produced_messages: production.messages,
        bytes: consumption.bytes,
        elapsed_sec,
        latency: LatencySummary::of(&consumption.histogram),
        errors,
        first_error,
        ..options.report("e2e", &layout)
    }
    .with_throughput())
}
