//! `sluice cluster info`: cluster id, controller, brokers, topic and partition counts.
//! `sluice cluster reassign` / `reassignments`: move a partition to other brokers
//! (KIP-455) and list the moves in progress.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::json;
use sluice_client::admin::PartitionReassignment;
use sluice_client::Admin;

use crate::output::{self, print_json, print_table, CliError, CommonArgs, Output};

/// How often `reassign --wait` asks whether the move finished.
const REASSIGN_POLL_INTERVAL_MS: u64 = 500;

#[derive(Args)]
#[command(after_help = output::EXIT_CODES_HELP)]
pub struct ClusterArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Cluster id, controller, brokers (id, host:port, rack), topic and partition counts.
    Info,
    /// Move a partition to other brokers (add or drain a broker), or cancel a move. The
    /// new replicas copy the data from the leader; the old ones are dropped once every
    /// new one is in sync, and leadership moves to the first new replica if needed.
    Reassign(ReassignArgs),
    /// Partition reassignments in progress: every replica, the ones still copying
    /// (adding) and the ones that go when they are done (removing).
    Reassignments {
        /// Only this topic's partitions.
        #[arg(long)]
        topic: Option<String>,
    },
}

#[derive(Args)]
struct ReassignArgs {
    /// Topic of the partition.
    #[arg(long)]
    topic: String,
    /// Partition number.
    #[arg(long)]
    partition: i32,
    /// The broker ids the partition moves to, preferred leader first (`2,3,4`).
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "cancel",
        conflicts_with = "cancel"
    )]
    replicas: Vec<i32>,
    /// Cancel the move in progress: back to the replicas before it started.
    #[arg(long)]
    cancel: bool,
    /// Wait until the move is finished (every new replica in sync, old ones dropped).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (exit code 1; the move goes on).
    #[arg(long, default_value_t = 600_000)]
    wait_timeout_ms: u64,
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let mut admin = output::connect(&args.common).await?;
    match args.command {
        ClusterCommand::Reassign(reassign_args) => {
            reassign(&mut admin, reassign_args, args.common.output).await
        }
        ClusterCommand::Reassignments { topic } => {
            let ongoing: Vec<PartitionReassignment> = admin
                .list_partition_reassignments(None)
                .await?
                .into_iter()
                .filter(|r| topic.as_ref().is_none_or(|t| *t == r.topic))
                .collect();
            match args.common.output {
                Output::Json => print_json(&json!(ongoing
                    .iter()
                    .map(reassignment_json)
                    .collect::<Vec<_>>()))?,
                Output::Table => print_table(
                    &[
                        "TOPIC",
                        "PARTITION",
                        "REPLICAS",
                        "TARGET",
                        "ADDING",
                        "REMOVING",
                    ],
                    ongoing
                        .iter()
                        .map(|r| {
                            vec![
                                r.topic.clone(),
                                r.partition.to_string(),
                                id_list(&r.replicas),
                                id_list(&r.target_replicas()),
                                id_list(&r.adding_replicas),
                                id_list(&r.removing_replicas),
                            ]
                        })
                        .collect(),
                ),
            }
            Ok(())
        }
        ClusterCommand::Info => {
            let cluster = admin.describe_cluster().await?;
            let topics = admin.list_topics(true).await?;
            let user_topics: Vec<_> = topics.iter().filter(|t| !t.internal).collect();
            let partitions: usize = user_topics.iter().map(|t| t.partition_count).sum();
            let internal_topics = topics.len() - user_topics.len();
            match args.common.output {
                Output::Json => print_json(&json!({
                    "cluster_id": cluster.cluster_id,
                    "controller": cluster.controller().map(|c| json!({
                        "id": c.id, "host": c.host, "port": c.port, "rack": c.rack,
                    })),
                    "controller_id": cluster.controller_id,
                    "brokers": cluster.brokers.iter().map(|b| json!({
                        "id": b.id, "host": b.host, "port": b.port, "rack": b.rack,
                    })).collect::<Vec<_>>(),
                    "topics": user_topics.len(),
                    "partitions": partitions,
                    "internal_topics": internal_topics,
                }))?,
                Output::Table => {
                    println!(
                        "CLUSTER-ID  {}",
                        cluster.cluster_id.as_deref().unwrap_or("-")
                    );
                    println!(
                        "CONTROLLER  {}",
                        match (cluster.controller(), cluster.controller_id) {
                            (Some(c), _) => format!("{} ({})", c.id, c.address()),
                            (None, Some(id)) => id.to_string(),
                            (None, None) => "-".to_string(),
                        }
                    );
                    println!(
                        "TOPICS      {} ({} partitions; {} internal topics)",
                        user_topics.len(),
                        partitions,
                        internal_topics
                    );
                    println!();
                    print_table(
                        &["BROKER-ID", "ADDRESS", "RACK"],
                        cluster
                            .brokers
                            .iter()
                            .map(|b| {
                                vec![
                                    b.id.to_string(),
                                    b.address(),
                                    b.rack.clone().unwrap_or_else(|| "-".to_string()),
                                ]
                            })
                            .collect(),
                    );
                }
            }
            Ok(())
        }
    }
}

/// `a,b,c` (or `-` for none), as `--replicas` takes them.
fn id_list(ids: &[i32]) -> String {
    if ids.is_empty() {
        return "-".to_string();
    }
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}

fn reassignment_json(r: &PartitionReassignment) -> serde_json::Value {
    json!({
        "topic": r.topic,
        "partition": r.partition,
        "replicas": r.replicas,
        "target_replicas": r.target_replicas(),
        "adding_replicas": r.adding_replicas,
        "removing_replicas": r.removing_replicas,
    })
}

/// The move of `topic`/`partition` in progress, if any.
async fn ongoing_move(
    admin: &mut Admin,
    topic: &str,
    partition: i32,
) -> anyhow::Result<Option<PartitionReassignment>> {
    let wanted = [(topic.to_string(), partition)];
    Ok(admin
        .list_partition_reassignments(Some(&wanted))
        .await?
        .into_iter()
        .find(|r| r.topic == topic && r.partition == partition))
}

async fn reassign(admin: &mut Admin, args: ReassignArgs, output: Output) -> anyhow::Result<()> {
    let target = (!args.cancel).then(|| args.replicas.clone());
    let key = (args.topic.clone(), args.partition);
    let mut results = admin
        .alter_partition_reassignments(&BTreeMap::from([(key.clone(), target.clone())]))
        .await?;
    match results.remove(&key) {
        Some(Ok(())) => {}
        Some(Err(error)) => {
            let what = if args.cancel {
                "cancel the move of"
            } else {
                "reassign"
            };
            return Err(anyhow::Error::new(error).context(format!(
                "cannot {what} `{}` partition {}",
                args.topic, args.partition
            )));
        }
        None => anyhow::bail!(
            "the broker did not answer for `{}` partition {}",
            args.topic,
            args.partition
        ),
    }
    let mut ongoing = ongoing_move(admin, &args.topic, args.partition).await?;
    if args.wait {
        let started = Instant::now();
        while ongoing.is_some() {
            if started.elapsed() >= Duration::from_millis(args.wait_timeout_ms) {
                return Err(CliError {
                    code: output::exit::FAILED,
                    message: format!(
                        "`{}` partition {} is still moving after {} ms (it goes on; see `sluice cluster reassignments`)",
                        args.topic, args.partition, args.wait_timeout_ms
                    ),
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(REASSIGN_POLL_INTERVAL_MS)).await;
            ongoing = ongoing_move(admin, &args.topic, args.partition).await?;
        }
    }
    let status = match (&ongoing, args.cancel) {
        (Some(_), _) => "moving",
        (None, true) => "cancelled",
        (None, false) => "done",
    };
    match output {
        Output::Json => print_json(&json!({
            "topic": args.topic,
            "partition": args.partition,
            "target_replicas": target,
            "status": status,
            "reassignment": ongoing.as_ref().map(reassignment_json),
        }))?,
        Output::Table => print_table(
            &[
                "TOPIC",
                "PARTITION",
                "TARGET",
                "STATUS",
                "ADDING",
                "REMOVING",
            ],
            vec![vec![
                args.topic.clone(),
                args.partition.to_string(),
                target
                    .as_deref()
                    .map(id_list)
                    .unwrap_or_else(|| "-".to_string()),
                status.to_string(),
                ongoing
                    .as_ref()
                    .map(|r| id_list(&r.adding_replicas))
                    .unwrap_or_else(|| "-".to_string()),
                ongoing
                    .as_ref()
                    .map(|r| id_list(&r.removing_replicas))
                    .unwrap_or_else(|| "-".to_string()),
            ]],
        ),
    }
    Ok(())
}
