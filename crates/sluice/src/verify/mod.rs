//! `sluice verify`: a crash loop against a real `sluice serve` child process, then a
//! checker that proves nothing acknowledged was lost, duplicated, reordered or invented
//! and that committed group offsets never went backwards.
//!
//! The run: start the broker on a free port with its own data directory; create a topic;
//! start `--producers` idempotent acks=all SDK producers writing numbered records
//! (`sv1:{run}:{producer}:{seq}`, key `k{seq % keys}`) and one group consumer that
//! commits what it read; for `--rounds` rounds, after a random uptime, SIGKILL the
//! broker and restart it (or, with `--stop-ratio`, SIGSTOP it for 0.2-3 s); after each
//! restart fetch the group's committed offsets. At the end the producers are closed, the
//! broker is SIGKILLed and restarted once more, every partition is read from offset 0 to
//! its high watermark and [`checker::check`] compares that with the recorded history.
//!
//! `--check-only` re-runs the final part (start the broker, read, check) on the data
//! directory and `--history` file of an earlier run: a test damages the log in between
//! to prove the checker fails loudly.

mod broker;
mod checker;
mod cluster;
mod history;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;
use sluice_client::admin::{NewTopic, LATEST};
use sluice_client::{
    AutoOffsetReset, Consumer, ConsumerOptions, Producer, ProducerOptions, ProducerRecord,
    TopicPartition,
};

use crate::output::{self, CliError, Output};
use checker::{CheckReport, ReadRecord};
use cluster::{Cluster, Layout, Leadership};
use history::{Ack, Commit, Failure, History, Observation, RunInfo};

/// Exit code of a run that found a violation (1 stays "the run itself failed").
pub const EXIT_VIOLATION: u8 = 5;

/// Violations printed in detail (all are counted; `-o json` lists up to this many too).
const VIOLATIONS_SHOWN: usize = 20;
/// How long reading the topic back may go without progress.
const READ_STALL_TIMEOUT_MS: u64 = 60_000;
/// How long fetching committed offsets may keep failing (e.g. while the coordinator
/// loads the offsets topic) before the observation is given up.
const OBSERVE_TIMEOUT_MS: u64 = 30_000;
/// Timeout of the verifier's admin and consumer requests.
const CLIENT_REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Consecutive poll errors after which the group consumer is recreated.
const CONSUMER_ERRORS_MAX: u32 = 20;
/// How long the group consumer may take, after the load stopped, to commit up to the
/// high watermarks.
const CONSUMER_DRAIN_TIMEOUT_MS: u64 = 60_000;
/// Broker settings of every run (before `--broker-arg`, which overrides them): the group
/// consumer joins at once instead of waiting out Kafka's 3 s initial rebalance delay
/// after each restart.
const DEFAULT_BROKER_SETTINGS: &[(&str, &str)] = &[("group.initial.rebalance.delay.ms", "0")];

#[derive(Args)]
#[command(
    after_help = "Exit codes:\n  0  clean: no violation\n  1  the run could not be completed (the broker did not restart, or exited on its own)\n  2  usage error\n  5  a violation was found (lost, duplicated, out of order, phantom, commit regression)"
)]
pub struct VerifyArgs {
    /// The `sluice` binary to run as the broker [default: this executable].
    #[arg(long, value_name = "PATH")]
    broker_bin: Option<PathBuf>,
    /// Working directory: the broker's data (`log/`), its output (`broker.log`) and the
    /// history on failure [default: a new temporary directory, removed when the run is
    /// clean unless --keep-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the default temporary directory even when the run is clean.
    #[arg(long)]
    keep_data: bool,
    /// Write the history (acks, failures, commits, observations) to FILE as JSON lines;
    /// with --check-only, the history to check.
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// Do not produce or inject faults: start the broker on --data-dir, read the topic
    /// and check it against --history.
    #[arg(long, requires_all = ["history", "data_dir"])]
    check_only: bool,
    /// Idempotent acks=all producers.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    producers: u32,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=1024))]
    partitions: i32,
    /// Distinct keys (`k0`..): record `seq` has key `k{seq % keys}`.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Records per second per producer.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,
    /// Fault rounds (each a SIGKILL and restart, or a SIGSTOP and SIGCONT).
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Seed of the fault schedule [default: from the clock; printed].
    #[arg(long)]
    seed: Option<u64>,
    /// Share of rounds that SIGSTOP the broker instead of killing it.
    #[arg(long, default_value_t = 0.3)]
    stop_ratio: f64,
    /// Shortest time the broker serves between faults.
    #[arg(long, default_value_t = 300)]
    min_uptime_ms: u64,
    /// Longest time the broker serves between faults.
    #[arg(long, default_value_t = 3_000)]
    max_uptime_ms: u64,
    /// Shortest SIGSTOP pause.
    #[arg(long, default_value_t = 200)]
    min_stop_ms: u64,
    /// Longest SIGSTOP pause.
    #[arg(long, default_value_t = 3_000)]
    max_stop_ms: u64,
    /// The producers' `delivery.timeout.ms`: how long a record is retried.
    #[arg(long, default_value_t = 30_000)]
    delivery_timeout_ms: u64,
    /// How long a (re)started broker may take to serve.
    #[arg(long, default_value_t = 60_000)]
    start_timeout_ms: u64,
    /// A broker setting for every start, KEY=VALUE (e.g. log.segment.bytes=65536);
    /// repeatable.
    #[arg(long = "broker-arg", value_name = "KEY=VALUE", value_parser = output::parse_key_value)]
    broker_args: Vec<(String, String)>,
    /// Brokers: 1 runs one `sluice serve` (data in `log/`); more start that many as one
    /// cluster (node ids 1..=N, every node a controller voter, data in `node-N/`, output
    /// in `broker-N.log`) and each round faults one of them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=9))]
    brokers: u32,
    /// Replication factor of the topic (and of `__consumer_offsets`) in a cluster
    /// [default: min(brokers, 3)].
    #[arg(long, value_parser = clap::value_parser!(i16).range(1..=9))]
    replication_factor: Option<i16>,
    /// `min.insync.replicas` of the topic in a cluster [default: 2 when the replication
    /// factor is 3 or more, else 1].
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=9))]
    min_insync_replicas: Option<i32>,
    /// Which broker a round faults in a cluster: any (uniformly), or the leader of a
    /// random partition of the topic.
    #[arg(long, value_enum, default_value_t = FaultTarget::Any)]
    fault_target: FaultTarget,
    /// In a cluster, how long after a fault the verifier waits for every partition to
    /// have a leader and a full ISR again before the next round (a round that waits
    /// longer is counted, not fatal).
    #[arg(long, default_value_t = 60_000)]
    settle_timeout_ms: u64,
    /// Summary format: a table, or one JSON document on stdout.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    output: Output,
}

/// Which broker a cluster round faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FaultTarget {
    Any,
    Leader,
}

/// splitmix64: a tiny seeded generator, so a seed reproduces the fault schedule without
/// a dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high` (`low` when `high <= low`).
    fn between(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low + 1)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// What the producers, the consumer and the fault loop share.
struct Shared {
    clock: AtomicU64,
    history: Mutex<History>,
    stop: AtomicBool,
    /// Set once the producers are closed: the high watermarks the group consumer reads
    /// and commits up to before it stops.
    drain_to: Mutex<Option<BTreeMap<i32, i64>>>,
}

impl Shared {
    /// The next tick of the run's logical clock.
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    fn history(&self) -> MutexGuard<'_, History> {
        // A panicking task leaves the history as it was: keep going.
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn drain_to(&self) -> Option<BTreeMap<i32, i64>> {
        self.drain_to
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Counts of the fault loop.
#[derive(Default)]
struct Faults {
    rounds: u32,
    kills: u32,
    stops: u32,
    /// Per node id (clusters).
    kills_by_broker: BTreeMap<i32, u32>,
    stops_by_broker: BTreeMap<i32, u32>,
    /// Partitions whose leader (or leader epoch) changed across a round, summed.
    leader_changes: u32,
    /// Rounds after which the cluster did not get back to full ISRs in time.
    unsettled_rounds: u32,
    /// Fewest replicas of a `__consumer_offsets` partition (clusters; the broker caps
    /// them at the brokers registered when the topic was created).
    offsets_topic_replicas: Option<usize>,
}

/// The cluster's shape as the summary reports it.
struct Shape {
    brokers: usize,
    replication_factor: Option<i16>,
    min_insync_replicas: Option<i32>,
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    SplitMix(nanos ^ u64::from(std::process::id()).rotate_left(32)).next_u64()
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.stop_ratio) {
        anyhow::bail!("--stop-ratio must be between 0 and 1");
    }
    let bin = match &args.broker_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe().context("cannot find this executable")?,
    };
    let default_dir = args.data_dir.is_none();
    let seed = args.seed.unwrap_or_else(clock_seed);
    let run_id = clock_seed();
    let work_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("sluice-verify-{run_id:016x}")),
    };
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("cannot create {}", work_dir.display()))?;
    let layout = if args.check_only {
        // The run being re-checked decides: a saved layout means a cluster.
        Layout::load(&work_dir)?
    } else if args.brokers > 1 {
        let replication_factor = args
            .replication_factor
            .unwrap_or_else(|| cluster::default_replication_factor(args.brokers));
        if i64::from(replication_factor) > i64::from(args.brokers) {
            anyhow::bail!(
                "--replication-factor {replication_factor} needs at least as many --brokers \
                 (got {})",
                args.brokers
            );
        }
        let min_insync_replicas = args
            .min_insync_replicas
            .unwrap_or_else(|| cluster::default_min_insync_replicas(replication_factor));
        if min_insync_replicas > i32::from(replication_factor) {
            anyhow::bail!(
                "--min-insync-replicas {min_insync_replicas} is above the replication \
                 factor {replication_factor}: nothing could be acknowledged"
            );
        }
        let layout = Layout::on_free_ports(args.brokers, replication_factor, min_insync_replicas)?;
        layout.save(&work_dir.join(cluster::LAYOUT_FILE))?;
        Some(layout)
    } else {
        None
    };
    let mut settings: Vec<(String, String)> = DEFAULT_BROKER_SETTINGS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut cluster = match &layout {
        Some(layout) => {
            settings.extend(cluster::cluster_settings(layout));
            settings.extend(args.broker_args.iter().cloned());
            Cluster::from_layout(&bin, layout, &work_dir, &settings)
        }
        None => {
            std::fs::create_dir_all(work_dir.join("log"))
                .with_context(|| format!("cannot create {}", work_dir.display()))?;
            settings.extend(args.broker_args.iter().cloned());
            let address = cluster::free_address().context("cannot find a free port")?;
            Cluster::single(bin, address, &work_dir, settings)
        }
    };
    let shape = Shape {
        brokers: cluster.len(),
        replication_factor: layout.as_ref().map(|l| l.replication_factor),
        min_insync_replicas: layout.as_ref().map(|l| l.min_insync_replicas),
    };
    let outcome = tokio::select! {
        outcome = execute(&args, &mut cluster, layout.as_ref(), &work_dir, seed, run_id) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let outcome = match outcome {
        Ok(run) => {
            if let Err(error) = cluster.terminate_all().await {
                tracing::warn!(%error, "stopping the brokers");
            }
            Ok(run)
        }
        Err(error) => {
            if let Err(kill_error) = cluster.kill_all().await {
                tracing::warn!(error = %kill_error, "killing the brokers");
            }
            Err(error.context(format!("data kept in {}", work_dir.display())))
        }
    };
    let (report, faults, info) = outcome?;
    let clean = report.is_clean();
    print_summary(&args, &report, &faults, &shape, &info, &work_dir, info.seed)?;
    if clean {
        if default_dir && !args.keep_data {
            if let Err(error) = std::fs::remove_dir_all(&work_dir) {
                tracing::warn!(%error, dir = %work_dir.display(), "cannot remove the run's directory");
            }
        }
        Ok(())
    } else {
        Err(CliError {
            code: EXIT_VIOLATION,
            message: format!(
                "{} violation(s) found; broker data and output kept in {}",
                report.violation_count(),
                work_dir.display()
            ),
        }
        .into())
    }
}

/// Picks the node a cluster round faults (an index into `cluster.nodes`): any node, or
/// the leader of a random partition (any node when that partition has no live leader).
async fn pick_target(
    args: &VerifyArgs,
    cluster: &Cluster,
    topic: &str,
    rng: &mut SplitMix,
) -> usize {
    let last = cluster.len() as u64 - 1;
    let any = rng.between(0, last) as usize;
    if args.fault_target == FaultTarget::Any {
        return any;
    }
    let partition = rng.between(0, args.partitions.max(1) as u64 - 1) as i32;
    match cluster.describe(topic, CLIENT_REQUEST_TIMEOUT_MS).await {
        Ok(partitions) => {
            let leader = partitions
                .iter()
                .find(|p| p.partition == partition)
                .and_then(|p| p.leader);
            cluster
                .node_ids()
                .iter()
                .position(|id| Some(*id) == leader)
                .unwrap_or(any)
        }
        Err(error) => {
            tracing::warn!(%error, "cannot find the leader to fault; faulting any broker");
            any
        }
    }
}

/// After a cluster fault: waits for full ISRs and counts leader changes since `before`.
async fn settle(
    args: &VerifyArgs,
    cluster: &Cluster,
    topic: &str,
    faults: &mut Faults,
    before: &mut Option<Leadership>,
    when: &str,
) {
    let (now, in_sync) = cluster
        .wait_in_sync(
            topic,
            Duration::from_millis(args.settle_timeout_ms),
            CLIENT_REQUEST_TIMEOUT_MS,
        )
        .await;
    if !in_sync {
        faults.unsettled_rounds += 1;
        eprintln!(
            "verify: {when}: the ISR of {topic} was not full again within {} ms",
            args.settle_timeout_ms
        );
    }
    if let (Some(then), Some(now)) = (before.as_ref(), now.as_ref()) {
        faults.leader_changes += cluster::leader_changes(then, now);
    }
    if now.is_some() {
        *before = now;
    }
}

/// The run (or the check-only pass) with the brokers already set up; returns the report.
async fn execute(
    args: &VerifyArgs,
    cluster: &mut Cluster,
    layout: Option<&Layout>,
    work_dir: &Path,
    seed: u64,
    run_id: u64,
) -> anyhow::Result<(CheckReport, Faults, RunInfo)> {
    let start_timeout = Duration::from_millis(args.start_timeout_ms);
    if args.check_only {
        let path = args
            .history
            .as_ref()
            .context("--check-only needs --history")?;
        let history = History::load(path)?;
        eprintln!(
            "verify: re-checking run {:016x} (topic {}) from {} against {} ({} broker(s))",
            history.run.run_id,
            history.run.topic,
            path.display(),
            work_dir.display(),
            cluster.len()
        );
        let info = history.run.clone();
        let topic = info.topic.clone();
        let shared = Arc::new(Shared {
            clock: AtomicU64::new(u64::MAX / 2),
            history: Mutex::new(history),
            stop: AtomicBool::new(true),
            drain_to: Mutex::new(None),
        });
        cluster
            .start_all(start_timeout)
            .await
            .context("starting the broker")?;
        let mut faults = Faults::default();
        if cluster.is_cluster() {
            settle(
                args,
                cluster,
                &topic,
                &mut faults,
                &mut None,
                "at the check",
            )
            .await;
            wait_acked_visible(args, cluster, &shared).await;
        }
        let report = finish(&shared, cluster, "at the check").await?;
        return Ok((report, faults, info));
    }

    let topic = format!("verify-{run_id:016x}");
    let info = RunInfo {
        run_id,
        topic: topic.clone(),
        partitions: args.partitions,
        producers: args.producers,
        keys: args.keys,
        group: topic.clone(),
        seed,
    };
    eprintln!(
        "verify: seed {seed}, run {run_id:016x}, {} round(s), {} broker(s) at {} with data in {}",
        args.rounds,
        cluster.len(),
        cluster.bootstrap(),
        work_dir.display()
    );
    cluster
        .start_all(start_timeout)
        .await
        .context("starting the broker")?;
    let bootstrap = cluster.bootstrap();
    let mut admin = cluster.admin(CLIENT_REQUEST_TIMEOUT_MS).await?;
    let mut new_topic = NewTopic::new(&topic).with_partitions(args.partitions);
    if let Some(layout) = layout {
        new_topic = new_topic
            .with_replication_factor(layout.replication_factor)
            .with_config(
                "min.insync.replicas",
                &layout.min_insync_replicas.to_string(),
            );
    }
    admin
        .create_topic(new_topic)
        .await
        .with_context(|| format!("creating topic {topic}"))?;
    drop(admin);
    let mut faults = Faults::default();
    let mut leadership = None;
    if let Some(layout) = layout {
        // Have the offsets topic created now, with every broker registered, and see how
        // many replicas it got.
        faults.offsets_topic_replicas =
            create_offsets_topic(cluster, &topic, layout.replication_factor).await;
        settle(
            args,
            cluster,
            &topic,
            &mut faults,
            &mut leadership,
            "after creating the topic",
        )
        .await;
        faults.unsettled_rounds = 0;
    }

    let shared = Arc::new(Shared {
        clock: AtomicU64::new(0),
        history: Mutex::new(History::new(info.clone())),
        stop: AtomicBool::new(false),
        drain_to: Mutex::new(None),
    });
    let mut producers = Vec::new();
    for index in 0..args.producers {
        producers.push(tokio::spawn(produce(
            Arc::clone(&shared),
            bootstrap.clone(),
            index,
            args.rate,
            args.delivery_timeout_ms,
        )));
    }
    let consumer = tokio::spawn(consume(Arc::clone(&shared), cluster.addresses()));

    let mut rng = SplitMix(seed);
    let node_ids = cluster.node_ids();
    let started = Instant::now();
    for round in 1..=args.rounds {
        let uptime_ms = rng.between(args.min_uptime_ms, args.max_uptime_ms);
        tokio::time::sleep(Duration::from_millis(uptime_ms)).await;
        cluster
            .check_alive()
            .with_context(|| format!("before the fault of round {round}"))?;
        let (acked, failed) = {
            let history = shared.history();
            (history.acks.len(), history.failures.len())
        };
        faults.rounds = round;
        // A single broker draws no target, so its seeds keep their old schedules.
        let target = if cluster.is_cluster() {
            pick_target(args, cluster, &topic, &mut rng).await
        } else {
            0
        };
        let node_id = node_ids.get(target).copied().unwrap_or(1);
        let which = if cluster.is_cluster() {
            format!(" broker {node_id}")
        } else {
            String::new()
        };
        if rng.chance(args.stop_ratio) {
            let stop_ms = rng.between(args.min_stop_ms, args.max_stop_ms);
            let node = &mut cluster.nodes[target];
            node.pause()?;
            tokio::time::sleep(Duration::from_millis(stop_ms)).await;
            node.resume()?;
            if node.node_id().is_some() {
                // Back serving (re-registered if it was fenced meanwhile).
                node.wait_ready(start_timeout)
                    .await
                    .with_context(|| format!("broker {node_id} after SIGCONT in round {round}"))?;
            }
            faults.stops += 1;
            *faults.stops_by_broker.entry(node_id).or_default() += 1;
            eprintln!(
                "round {round}/{}: SIGSTOP{which} for {stop_ms} ms after {uptime_ms} ms up \
                 (acked {acked}, failed {failed})",
                args.rounds
            );
        } else {
            let node = &mut cluster.nodes[target];
            node.kill().await?;
            let restart = Instant::now();
            node.start(start_timeout)
                .await
                .with_context(|| format!("restarting{which} in round {round}"))?;
            faults.kills += 1;
            *faults.kills_by_broker.entry(node_id).or_default() += 1;
            eprintln!(
                "round {round}/{}: SIGKILL{which} after {uptime_ms} ms up, serving again after \
                 {} ms (acked {acked}, failed {failed})",
                args.rounds,
                restart.elapsed().as_millis()
            );
            observe(&shared, cluster, &format!("after restart {}", faults.kills)).await;
        }
        if cluster.is_cluster() {
            settle(
                args,
                cluster,
                &topic,
                &mut faults,
                &mut leadership,
                &format!("round {round}"),
            )
            .await;
        }
    }
    eprintln!(
        "verify: {} round(s) in {:.1} s; closing the producers and the consumer",
        faults.rounds,
        started.elapsed().as_secs_f64()
    );
    shared.stop.store(true, Ordering::SeqCst);
    cluster.check_alive().context("after the last round")?;
    for producer in producers {
        producer.await.context("a producer task failed")??;
    }
    let high_watermarks = high_watermarks(cluster, &topic, args.partitions).await?;
    *shared.drain_to.lock().unwrap_or_else(|e| e.into_inner()) = Some(high_watermarks);
    consumer.await.context("the consumer task failed")?;
    observe(&shared, cluster, "after the load").await;
    cluster.check_alive().context("after the load")?;
    cluster.kill_all().await?;
    cluster
        .start_all(start_timeout)
        .await
        .context("restarting the broker(s) after the final SIGKILL")?;
    if cluster.is_cluster() {
        let mut final_faults = Faults::default();
        settle(
            args,
            cluster,
            &topic,
            &mut final_faults,
            &mut None,
            "after the final restart",
        )
        .await;
        faults.unsettled_rounds += final_faults.unsettled_rounds;
        wait_acked_visible(args, cluster, &shared).await;
    }
    eprintln!("verify: final SIGKILL and restart done; reading everything back");
    let report = match finish(&shared, cluster, "after the final restart").await {
        Ok(report) => report,
        Err(error) => {
            // Keep what the run recorded, so that `--check-only` can retry the check.
            let path = args
                .history
                .clone()
                .unwrap_or_else(|| work_dir.join("history.jsonl"));
            shared.history().save(&path)?;
            eprintln!("verify: history written to {}", path.display());
            return Err(error);
        }
    };
    if let Some(path) = &args.history {
        shared.history().save(path)?;
    }
    if !report.is_clean() {
        let path = work_dir.join("history.jsonl");
        shared.history().save(&path)?;
        eprintln!("verify: history written to {}", path.display());
    }
    Ok((report, faults, info))
}

/// Asks for the group's coordinator until one answers (the broker creates
/// `__consumer_offsets` on the first such request), then returns the fewest replicas
/// of its partitions; `None` when that could not be found out.
async fn create_offsets_topic(cluster: &Cluster, group: &str, wanted: i16) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_millis(OBSERVE_TIMEOUT_MS);
    loop {
        let attempt = async {
            let mut admin = cluster.admin(CLIENT_REQUEST_TIMEOUT_MS).await?;
            admin.coordinator(group).await?;
            cluster
                .describe(cluster::OFFSETS_TOPIC, CLIENT_REQUEST_TIMEOUT_MS)
                .await
        };
        match attempt.await {
            Ok(partitions) if !partitions.is_empty() => {
                let fewest = partitions.iter().map(|p| p.replicas.len()).min();
                if fewest.is_some_and(|f| (f as i64) < i64::from(wanted)) {
                    eprintln!(
                        "verify: __consumer_offsets got only {fewest:?} replica(s) per \
                         partition, not {wanted}"
                    );
                }
                return fewest;
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "finding the group's coordinator"),
        }
        if Instant::now() >= deadline {
            tracing::warn!("cannot have __consumer_offsets created");
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// After a cluster restart the leaders' high watermarks advance once the followers fetch
/// again: waits (up to `--settle-timeout-ms`) until each partition's high watermark
/// covers its highest acknowledged offset, so that the read-back does not race that.
/// A high watermark that never gets there is left to the checker to report.
async fn wait_acked_visible(args: &VerifyArgs, cluster: &Cluster, shared: &Shared) {
    let (topic, partitions, wanted) = {
        let history = shared.history();
        let mut wanted: BTreeMap<i32, i64> = BTreeMap::new();
        for ack in &history.acks {
            let end = wanted.entry(ack.partition).or_insert(0);
            *end = (*end).max(ack.offset + 1);
        }
        (history.run.topic.clone(), history.run.partitions, wanted)
    };
    let deadline = Instant::now() + Duration::from_millis(args.settle_timeout_ms);
    loop {
        let last = high_watermarks(cluster, &topic, partitions).await;
        if let Ok(now) = &last {
            if wanted
                .iter()
                .all(|(p, end)| now.get(p).is_some_and(|hw| hw >= end))
            {
                return;
            }
        }
        if Instant::now() >= deadline {
            eprintln!(
                "verify: the high watermarks {last:?} did not reach the acknowledged ends \
                 {wanted:?} within {} ms",
                args.settle_timeout_ms
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Observes the committed offsets, reads every partition back and checks the history.
async fn finish(
    shared: &Arc<Shared>,
    cluster: &Cluster,
    when: &str,
) -> anyhow::Result<CheckReport> {
    if !observe(shared, cluster, when).await {
        anyhow::bail!("cannot fetch the group's committed offsets {when}");
    }
    let (topic, partitions) = {
        let history = shared.history();
        (history.run.topic.clone(), history.run.partitions)
    };
    let (reads, high_watermarks) = read_all(cluster, &topic, partitions).await?;
    let history = shared.history();
    Ok(checker::check(&history, &reads, &high_watermarks))
}

/// One producer: `rate` records a second until the run stops, then close (flush).
async fn produce(
    shared: Arc<Shared>,
    bootstrap: String,
    index: u32,
    rate: u64,
    delivery_timeout_ms: u64,
) -> anyhow::Result<()> {
    let (topic, run_id, keys) = {
        let history = shared.history();
        (
            history.run.topic.clone(),
            history.run.run_id,
            history.run.keys,
        )
    };
    let options = ProducerOptions {
        client_id: format!("sluice-verify-{index}"),
        acks: -1,
        enable_idempotence: true,
        delivery_timeout_ms,
        request_timeout_ms: CLIENT_REQUEST_TIMEOUT_MS,
        max_block_ms: 10_000,
        ..ProducerOptions::default()
    };
    let producer = Producer::connect(&bootstrap, options)
        .await
        .with_context(|| format!("producer {index} cannot connect"))?;
    // Send in 10 ms steps; a step that falls behind (send blocked while the broker is
    // down) is not made up for with a burst.
    let step = Duration::from_millis(10);
    let mut ticker = tokio::time::interval(step);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut seq: u64 = 0;
    while !shared.stopped() {
        ticker.tick().await;
        let due = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX) * rate / 1_000;
        // At most one second's worth per step, so a long stall is not followed by a flood.
        let target = due.min(seq + rate.max(1));
        while seq < target && !shared.stopped() {
            let sent_tick = shared.tick();
            shared.history().sent[index as usize] = seq + 1;
            let record =
                ProducerRecord::new(topic.clone(), history::record_value(run_id, index, seq))
                    .with_key(history::record_key(seq, keys));
            let for_callback = Arc::clone(&shared);
            let accepted = producer
                .send_with_callback(record, move |result| {
                    let ack_tick = for_callback.tick();
                    let mut history = for_callback.history();
                    match result {
                        Ok(metadata) => history.acks.push(Ack {
                            producer: index,
                            seq,
                            partition: metadata.partition,
                            offset: metadata.offset,
                            sent_tick,
                            ack_tick,
                        }),
                        Err(error) => history.failures.push(Failure {
                            producer: index,
                            seq,
                            error: error.to_string(),
                        }),
                    }
                })
                .await;
            if let Err(error) = accepted {
                tracing::debug!(producer = index, seq, %error, "send not accepted");
                shared.history().failures.push(Failure {
                    producer: index,
                    seq,
                    error: format!("not accepted: {error}"),
                });
            }
            seq += 1;
        }
    }
    producer.close().await;
    Ok(())
}

/// The group consumer: reads and commits what it read until the run stops, recreating
/// itself after repeated errors (a static member, so a new instance takes the old one's
/// place without waiting out its session). The SDK consumer takes one bootstrap address:
/// each new instance uses the next of `addresses`, so a dead broker is not retried alone.
async fn consume(shared: Arc<Shared>, addresses: Vec<String>) {
    let (topic, group) = {
        let history = shared.history();
        (history.run.topic.clone(), history.run.group.clone())
    };
    let options = ConsumerOptions {
        group_id: Some(group),
        group_instance_id: Some("sluice-verify-consumer".to_string()),
        client_id: "sluice-verify-consumer".to_string(),
        session_timeout_ms: 10_000,
        heartbeat_interval_ms: 1_000,
        rebalance_timeout_ms: 10_000,
        max_poll_interval_ms: 60_000,
        request_timeout_ms: CLIENT_REQUEST_TIMEOUT_MS as u32,
        auto_offset_reset: AutoOffsetReset::Earliest,
        enable_auto_commit: false,
        ..ConsumerOptions::default()
    };
    let drain_deadline = Mutex::new(None::<Instant>);
    // Runs until the load stopped and the commits reached the high watermarks it left
    // (or the drain timed out).
    let done = |committed: &BTreeMap<i32, i64>| -> bool {
        if !shared.stopped() {
            return false;
        }
        let Some(targets) = shared.drain_to() else {
            return false;
        };
        let mut deadline = drain_deadline.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = deadline.get_or_insert_with(|| {
            Instant::now() + Duration::from_millis(CONSUMER_DRAIN_TIMEOUT_MS)
        });
        if Instant::now() >= *deadline {
            tracing::warn!("the group consumer did not commit up to the high watermarks in time");
            return true;
        }
        targets
            .iter()
            .all(|(p, hw)| *hw == 0 || committed.get(p).is_some_and(|c| c >= hw))
    };
    let mut committed: BTreeMap<i32, i64> = BTreeMap::new();
    let mut attempt = 0usize;
    while !done(&committed) {
        let bootstrap = &addresses[attempt % addresses.len().max(1)];
        attempt += 1;
        let mut consumer = match Consumer::connect(bootstrap, options.clone()).await {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::debug!(%error, "consumer cannot connect; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if let Err(error) = consumer.subscribe(&[topic.as_str()]).await {
            tracing::warn!(%error, "consumer cannot subscribe; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let mut errors = 0u32;
        while !done(&committed) && errors < CONSUMER_ERRORS_MAX {
            match consumer.poll(Duration::from_millis(500)).await {
                Ok(records) if records.is_empty() => {
                    errors = 0;
                    // Draining with nothing left to read: commit the positions, in case
                    // the last commit's answer was lost in a crash.
                    if shared.drain_to().is_some() {
                        let positions = consumer.positions();
                        if !positions.is_empty() && consumer.commit_sync().await.is_ok() {
                            let tick = shared.tick();
                            let mut history = shared.history();
                            for (tp, offset) in positions {
                                let best = committed.entry(tp.partition).or_insert(offset);
                                *best = (*best).max(offset);
                                history.commits.push(Commit {
                                    partition: tp.partition,
                                    offset,
                                    tick,
                                });
                            }
                        }
                    }
                }
                Ok(records) => {
                    errors = 0;
                    match consumer.commit_records(&records).await {
                        Ok(()) => {
                            let tick = shared.tick();
                            let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
                            for record in &records {
                                let end = ends.entry(record.partition).or_insert(0);
                                *end = (*end).max(record.offset + 1);
                            }
                            let mut history = shared.history();
                            for (partition, offset) in ends {
                                let best = committed.entry(partition).or_insert(offset);
                                *best = (*best).max(offset);
                                history.commits.push(Commit {
                                    partition,
                                    offset,
                                    tick,
                                });
                            }
                        }
                        Err(error) => tracing::debug!(%error, "commit failed"),
                    }
                }
                Err(error) => {
                    errors += 1;
                    tracing::debug!(%error, errors, "consumer poll failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if let Err(error) = consumer.close().await {
            tracing::debug!(%error, "closing the consumer");
        }
    }
}

/// Fetches the group's committed offsets into the history; false if that kept failing
/// for [`OBSERVE_TIMEOUT_MS`].
async fn observe(shared: &Shared, cluster: &Cluster, when: &str) -> bool {
    let (topic, group) = {
        let history = shared.history();
        (history.run.topic.clone(), history.run.group.clone())
    };
    let tick = shared.tick();
    let deadline = Instant::now() + Duration::from_millis(OBSERVE_TIMEOUT_MS);
    loop {
        let attempt = async {
            let mut admin = cluster.admin(CLIENT_REQUEST_TIMEOUT_MS).await?;
            admin.committed_offsets(&group).await
        };
        match attempt.await {
            Ok(offsets) => {
                let offsets = offsets
                    .into_iter()
                    .filter(|((t, _), _)| *t == topic)
                    .map(|((_, partition), committed)| (partition, committed.offset))
                    .collect();
                shared.history().observations.push(Observation {
                    tick,
                    when: when.to_string(),
                    offsets,
                });
                return true;
            }
            Err(error) if Instant::now() < deadline => {
                tracing::debug!(%error, "fetching committed offsets; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => {
                tracing::warn!(%error, when, "cannot fetch the committed offsets");
                return false;
            }
        }
    }
}

/// The high watermark of every partition of `topic` (ListOffsets LATEST).
async fn high_watermarks(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let mut admin = cluster.admin(CLIENT_REQUEST_TIMEOUT_MS).await?;
    let wanted: Vec<(String, i32)> = (0..partitions).map(|p| (topic.to_string(), p)).collect();
    Ok(admin
        .list_offsets(&wanted, LATEST)
        .await
        .context("reading the high watermarks")?
        .into_iter()
        .map(|((_, partition), offset)| (partition, offset))
        .collect())
}

/// Reads every partition from offset 0 to its high watermark (as ListOffsets reports it
/// now) with a group-less SDK consumer.
async fn read_all(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<(Vec<ReadRecord>, BTreeMap<i32, i64>)> {
    let high_watermarks = high_watermarks(cluster, topic, partitions).await?;
    // Every broker is up now; the SDK consumer finds each partition's leader.
    let bootstrap = cluster.addresses().into_iter().next().unwrap_or_default();
    let options = ConsumerOptions {
        client_id: "sluice-verify-reader".to_string(),
        auto_offset_reset: AutoOffsetReset::None,
        request_timeout_ms: CLIENT_REQUEST_TIMEOUT_MS as u32,
        ..ConsumerOptions::default()
    };
    let mut consumer = Consumer::connect(&bootstrap, options).await?;
    let assignment: Vec<TopicPartition> = (0..partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    consumer.assign(assignment.clone())?;
    // Every partition gets a position (an empty one too: a partition without one would
    // make `poll` look for a committed offset); those with nothing to read are paused.
    let mut pending = Vec::new();
    let mut empty = Vec::new();
    for tp in &assignment {
        consumer.seek(tp, 0)?;
        if high_watermarks.get(&tp.partition).copied().unwrap_or(0) > 0 {
            pending.push(tp.clone());
        } else {
            empty.push(tp.clone());
        }
    }
    if !empty.is_empty() {
        consumer.pause(&empty)?;
    }
    let mut reads = Vec::new();
    let mut last_progress = Instant::now();
    while !pending.is_empty() {
        let records = consumer
            .poll(Duration::from_millis(1_000))
            .await
            .context("reading the topic back")?;
        if !records.is_empty() {
            last_progress = Instant::now();
        }
        for record in records {
            let high_watermark = high_watermarks.get(&record.partition).copied().unwrap_or(0);
            if record.offset < high_watermark {
                reads.push(ReadRecord {
                    partition: record.partition,
                    offset: record.offset,
                    key: record.key.map(|k| k.to_vec()),
                    value: record.value.map(|v| v.to_vec()),
                });
            }
        }
        let positions = consumer.positions();
        let done: Vec<TopicPartition> = pending
            .iter()
            .filter(|tp| {
                positions.get(*tp).copied().unwrap_or(0)
                    >= high_watermarks.get(&tp.partition).copied().unwrap_or(0)
            })
            .cloned()
            .collect();
        if !done.is_empty() {
            consumer.pause(&done)?;
            pending.retain(|tp| !done.contains(tp));
        }
        if last_progress.elapsed() > Duration::from_millis(READ_STALL_TIMEOUT_MS) {
            anyhow::bail!(
                "reading the topic back made no progress for {READ_STALL_TIMEOUT_MS} ms; \
                 still at {positions:?} of high watermarks {high_watermarks:?}"
            );
        }
    }
    if let Err(error) = consumer.close().await {
        tracing::debug!(%error, "closing the reader");
    }
    Ok((reads, high_watermarks))
}

fn print_summary(
    args: &VerifyArgs,
    report: &CheckReport,
    faults: &Faults,
    shape: &Shape,
    info: &RunInfo,
    work_dir: &Path,
    seed: u64,
) -> anyhow::Result<()> {
    let commits = report.commit_regressions + report.commits_beyond_high_watermark;
    let mut rows: Vec<(String, u64)> = [
        ("brokers", shape.brokers as u64),
        ("rounds", u64::from(faults.rounds)),
        ("sigkills", u64::from(faults.kills)),
        ("sigstops", u64::from(faults.stops)),
        ("sent", report.sent),
        ("acked", report.acked),
        ("failed deliveries", report.failed),
        ("records read", report.records_read),
        ("lost", report.lost),
        ("duplicated", report.duplicated),
        ("out of order", report.out_of_order),
        ("phantom", report.phantom),
        ("commits acked", report.commits),
        ("offset observations", report.observations),
        ("commit regressions", commits),
    ]
    .into_iter()
    .map(|(name, count)| (name.to_string(), count))
    .collect();
    if shape.brokers > 1 {
        // Per-broker faults and what the cluster did, after the fault counts.
        let mut extra = Vec::new();
        for (id, kills) in &faults.kills_by_broker {
            extra.push((format!("sigkills broker {id}"), u64::from(*kills)));
        }
        for (id, stops) in &faults.stops_by_broker {
            extra.push((format!("sigstops broker {id}"), u64::from(*stops)));
        }
        extra.push((
            "leader changes".to_string(),
            u64::from(faults.leader_changes),
        ));
        extra.push((
            "unsettled rounds".to_string(),
            u64::from(faults.unsettled_rounds),
        ));
        if let Some(replicas) = faults.offsets_topic_replicas {
            extra.push(("offsets topic replicas".to_string(), replicas as u64));
        }
        rows.splice(4..4, extra);
    }
    let shown: Vec<String> = report
        .violations
        .iter()
        .take(VIOLATIONS_SHOWN)
        .map(ToString::to_string)
        .collect();
    match args.output {
        Output::Json => output::print_json(&json!({
            "seed": seed,
            "run_id": format!("{:016x}", info.run_id),
            "topic": info.topic,
            "data_dir": work_dir.display().to_string(),
            "check_only": args.check_only,
            "brokers": shape.brokers,
            "replication_factor": shape.replication_factor,
            "min_insync_replicas": shape.min_insync_replicas,
            "fault_target": match args.fault_target {
                FaultTarget::Any => "any",
                FaultTarget::Leader => "leader",
            },
            "sigkills_by_broker": faults.kills_by_broker.iter()
                .map(|(id, n)| (id.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "sigstops_by_broker": faults.stops_by_broker.iter()
                .map(|(id, n)| (id.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "leader_changes": faults.leader_changes,
            "unsettled_rounds": faults.unsettled_rounds,
            "offsets_topic_replicas": faults.offsets_topic_replicas,
            "rounds": faults.rounds,
            "sigkills": faults.kills,
            "sigstops": faults.stops,
            "sent": report.sent,
            "acked": report.acked,
            "failed": report.failed,
            "records_read": report.records_read,
            "commits": report.commits,
            "observations": report.observations,
            "lost": report.lost,
            "duplicated": report.duplicated,
            "out_of_order": report.out_of_order,
            "phantom": report.phantom,
            "commit_regressions": report.commit_regressions,
            "commits_beyond_high_watermark": report.commits_beyond_high_watermark,
            "violations": report.violation_count(),
            "clean": report.is_clean(),
            "first_violations": report.violations.iter().take(VIOLATIONS_SHOWN).collect::<Vec<_>>(),
        }))?,
        Output::Table => {
            output::print_table(
                &["CHECK", "COUNT"],
                rows.into_iter()
                    .map(|(name, count)| vec![name.to_string(), count.to_string()])
                    .collect(),
            );
            println!();
            if report.is_clean() {
                println!("OK: no violation (seed {seed})");
            } else {
                println!(
                    "FAILED: {} violation(s) (seed {seed}); the first {}:",
                    report.violation_count(),
                    shown.len()
                );
                for line in &shown {
                    println!("  {line}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_reproduces_the_schedule_within_its_bounds() {
        let draw = |seed| {
            let mut rng = SplitMix(seed);
            (0..200)
                .map(|_| (rng.between(300, 3_000), rng.chance(0.3)))
                .collect::<Vec<_>>()
        };
        let schedule = draw(2026);
        assert_eq!(schedule, draw(2026));
        assert_ne!(schedule, draw(2027));
        assert!(schedule.iter().all(|(ms, _)| (300..=3_000).contains(ms)));
        let stops = schedule.iter().filter(|(_, stop)| *stop).count();
        assert!((20..=100).contains(&stops), "{stops} of 200 with p = 0.3");
        let mut rng = SplitMix(1);
        assert_eq!(rng.between(5, 5), 5);
        assert_eq!(rng.between(9, 3), 9);
        assert!((0..100).all(|_| !rng.chance(0.0) && rng.chance(1.0)));
    }
}
