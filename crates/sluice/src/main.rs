//! `sluice`: the broker and its command-line tool.

mod bench;
mod cluster_cmd;
mod consume_cmd;
mod dlq_cmd;
mod exec_cmd;
mod group_cmd;
mod output;
mod produce_cmd;
mod topic_cmd;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use sluice_broker::alloc_guard;
use sluice_broker::config::{broker_setting, env_key, flatten_toml};
use sluice_broker::BrokerConfig;

#[global_allocator]
static ALLOCATOR: alloc_guard::GuardedAllocator = alloc_guard::GuardedAllocator;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A Kafka-compatible message queue in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker (single node: broker and controller in one process).
    Serve(ServeArgs),
    /// Consumer groups: list, describe with lag, reset offsets, delete.
    Group(group_cmd::GroupArgs),
    /// Topics: create, list, describe, alter, delete.
    Topic(topic_cmd::TopicArgs),
    /// The cluster: id, controller, brokers.
    Cluster(cluster_cmd::ClusterArgs),
    /// Benchmark any Kafka-compatible broker: produce, consume, end-to-end latency.
    Bench(bench::BenchArgs),
    /// Produce records, one per line, from stdin or a file.
    Produce(produce_cmd::ProduceArgs),
    /// Print records of a topic, from a group (committing after printing) or from offsets;
    /// or run a command per record with retries and a dead-letter topic (--exec).
    Consume(consume_cmd::ConsumeArgs),
    /// Dead-letter topics: list what they hold, replay them to their original topics.
    Dlq(dlq_cmd::DlqArgs),
    /// Crash loop: run a broker, SIGKILL/SIGSTOP it at random while producers and a group
    /// write and commit, then prove nothing acknowledged was lost, duplicated or reordered.
    Verify(verify::VerifyArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Address of the Kafka listener, host:port [default: 127.0.0.1:9092].
    #[arg(long)]
    listen: Option<String>,
    /// Address given to clients in Metadata, host:port [default: the listener].
    #[arg(long)]
    advertise: Option<String>,
    /// Address of the HTTP metrics endpoint (GET /metrics, GET /health), host:port
    /// [default: off].
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Directory for logs and metadata [default: ./sluice-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Node id of this broker [default: 1].
    #[arg(long)]
    node_id: Option<i32>,
    /// The controller quorum, `id@host:port,...` (Kafka's `controller.quorum.voters`)
    /// [default: this node alone, in process].
    #[arg(long)]
    controller_quorum_voters: Option<String>,
    /// Address the controller (Raft) listener binds, host:port [default: this node's
    /// entry in the voters].
    #[arg(long)]
    controller_listener: Option<String>,
    /// Rack of this broker (`broker.rack`), for rack-aware replica placement.
    #[arg(long)]
    broker_rack: Option<String>,
    /// TOML file of settings under Kafka's names, e.g. `"num.partitions" = 3`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Any broker setting under Kafka's name, e.g. `--set num.partitions=3`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
}

/// Collects settings from every source, lowest precedence first: config file,
/// `SLUICE_*` environment variables, named flags, then `--set`.
fn collect_settings(args: &ServeArgs) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let flat = flatten_toml(&text)
            .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
        pairs.extend(flat);
    }
    // SLUICE_* variables that name a setting apply (a bad value stops the start); others
    // belong to scripts around the broker and are only reported.
    let mut env: Vec<(String, String)> = Vec::new();
    for (var, value) in std::env::vars() {
        match env_key(&var) {
            Some(key) if broker_setting(&key).is_some() => env.push((key, value)),
            Some(_) => {
                tracing::warn!(variable = %var, "ignoring environment variable: no such setting")
            }
            None => {}
        }
    }
    env.sort();
    pairs.extend(env);
    if let Some(listen) = &args.listen {
        pairs.push(("listeners".into(), listen.clone()));
    }
    if let Some(advertise) = &args.advertise {
        pairs.push(("advertised.listeners".into(), advertise.clone()));
    }
    if let Some(metrics_listen) = &args.metrics_listen {
        pairs.push(("metrics.listen".into(), metrics_listen.clone()));
    }
    if let Some(dir) = &args.data_dir {
        pairs.push(("log.dirs".into(), dir.display().to_string()));
    }
    if let Some(node_id) = args.node_id {
        pairs.push(("node.id".into(), node_id.to_string()));
    }
    if let Some(voters) = &args.controller_quorum_voters {
        pairs.push(("controller.quorum.voters".into(), voters.clone()));
    }
    if let Some(listener) = &args.controller_listener {
        pairs.push(("controller.listener".into(), listener.clone()));
    }
    if let Some(rack) = &args.broker_rack {
        pairs.push(("broker.rack".into(), rack.clone()));
    }
    for setting in &args.settings {
        let Some((key, value)) = setting.split_once('=') else {
            bail!("--set expects KEY=VALUE, got `{setting}`");
        };
        pairs.push((key.trim().to_string(), value.to_string()));
    }
    Ok(pairs)
}

/// Logs go to stderr, coloured only on a terminal. The broker logs at `info`; the client
/// commands at `warn` (their results and errors are printed, routine group events are
/// not). `SLUICE_LOG` or `RUST_LOG` overrides either.
///
/// A log line that cannot be written (stderr redirected to a file on a full or failing
/// disk) is dropped: the subscriber's default would report it with `eprintln!`, which
/// panics when stderr fails, killing the task that logged, exactly when the broker is
/// logging storage errors.
fn init_logging(default_level: &str) {
    use std::io::IsTerminal;
    let filter = std::env::var("SLUICE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_level.to_string());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .init();
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => Ok("SIGTERM"),
        result = tokio::signal::ctrl_c() => result.map(|_| "SIGINT").context("cannot wait for Ctrl-C"),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let pairs = collect_settings(&args)?;
    let config = BrokerConfig::from_pairs(pairs).context("invalid configuration")?;
    let broker = sluice_broker::start(config).await?;
    tracing::info!(address = %broker.local_addr, "sluice is serving; SIGTERM or Ctrl-C stops it");
    let signal = wait_for_signal().await?;
    tracing::info!(
        signal,
        "shutting down: finishing in-flight requests and flushing"
    );
    broker.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(match cli.command {
        // openraft logs every vote and membership step at info: its warnings are enough.
        Command::Serve(_) => "info,openraft=warn",
        // The verifier breaks the broker on purpose: the SDK's reconnect warnings are noise.
        Command::Verify(_) => "warn,sluice_client=error",
        _ => "warn",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Group(args) => return output::finish(runtime.block_on(group_cmd::run(args))),
        Command::Topic(args) => return output::finish(runtime.block_on(topic_cmd::run(args))),
        Command::Cluster(args) => return output::finish(runtime.block_on(cluster_cmd::run(args))),
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::Produce(args) => return output::finish(runtime.block_on(produce_cmd::run(args))),
        Command::Consume(args) => return output::finish(runtime.block_on(consume_cmd::run(args))),
        Command::Dlq(args) => return output::finish(runtime.block_on(dlq_cmd::run(args))),
        Command::Verify(args) => return output::finish(runtime.block_on(verify::run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
