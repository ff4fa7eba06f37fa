//! `sluice group list|describe|reset-offsets`: consumer groups and their lag, against
//! any Kafka-compatible bootstrap address.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use sluice_client::admin::{TopicPartition, EARLIEST, LATEST};
use sluice_client::Admin;

#[derive(Clone, Copy, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Args)]
pub struct GroupArgs {
    /// Bootstrap broker, host:port.
    #[arg(
        long,
        short = 'b',
        global = true,
        default_value = "127.0.0.1:9092",
        env = "SLUICE_BOOTSTRAP"
    )]
    bootstrap: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: GroupCommand,
}

#[derive(Subcommand)]
enum GroupCommand {
    /// List every consumer group with its state.
    List,
    /// Members, assigned partitions, committed offsets, log end offsets and lag.
    Describe { group: String },
    /// Move a group's committed offsets (only while the group has no members).
    ResetOffsets(ResetArgs),
}

#[derive(Args)]
struct ResetArgs {
    group: String,
    /// Topic whose offsets to reset (all its partitions unless --partition is given).
    #[arg(long, required = true)]
    topic: Vec<String>,
    /// Only these partitions (with a single --topic).
    #[arg(long)]
    partition: Vec<i32>,
    #[arg(long, group = "target")]
    to_earliest: bool,
    #[arg(long, group = "target")]
    to_latest: bool,
    /// First offset whose record timestamp is at or after this (milliseconds since epoch).
    #[arg(long, group = "target", value_name = "MS")]
    to_timestamp: Option<i64>,
    /// An explicit offset, clamped to the partition's range.
    #[arg(long, group = "target")]
    to_offset: Option<i64>,
    /// Show what would be committed without committing.
    #[arg(long)]
    dry_run: bool,
}

pub async fn run(args: GroupArgs) -> anyhow::Result<()> {
    let mut admin = Admin::connect(&args.bootstrap, Duration::from_secs(30))
        .await
        .with_context(|| format!("cannot reach the broker at {}", args.bootstrap))?;
    match args.command {
        GroupCommand::List => list(&mut admin, args.output).await,
        GroupCommand::Describe { group } => describe(&mut admin, &group, args.output).await,
        GroupCommand::ResetOffsets(reset) => reset_offsets(&mut admin, reset, args.output).await,
    }
}

async fn list(admin: &mut Admin, output: Output) -> anyhow::Result<()> {
    let groups = admin.list_groups().await?;
    match output {
        Output::Json => {
            let rows: Vec<_> = groups
                .iter()
                .map(|g| json!({"group": g.group_id, "state": g.state, "protocol_type": g.protocol_type}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Output::Table => {
            let rows = groups
                .iter()
                .map(|g| vec![g.group_id.clone(), g.state.clone(), g.protocol_type.clone()])
                .collect();
            print_table(&["GROUP", "STATE", "PROTOCOL-TYPE"], rows);
        }
    }
    Ok(())
}

/// One line of `group describe`.
struct LagRow {
    topic: String,
    partition: i32,
    committed: Option<i64>,
    log_end: i64,
    member: Option<(String, String, String)>,
}

impl LagRow {
    fn lag(&self) -> Option<i64> {
        self.committed.map(|c| (self.log_end - c).max(0))
    }
}

async fn describe(admin: &mut Admin, group: &str, output: Output) -> anyhow::Result<()> {
    let description = admin.describe_group(group).await?;
    let committed = admin.committed_offsets(group).await?;
    let mut owners: BTreeMap<TopicPartition, (String, String, String)> = BTreeMap::new();
    for member in &description.members {
        for tp in &member.assignment {
            owners.insert(
                tp.clone(),
                (
                    member.member_id.clone(),
                    member.client_id.clone(),
                    member.client_host.clone(),
                ),
            );
        }
    }
    let partitions: BTreeSet<TopicPartition> =
        committed.keys().chain(owners.keys()).cloned().collect();
    let partitions: Vec<TopicPartition> = partitions.into_iter().collect();
    let log_ends = if partitions.is_empty() {
        BTreeMap::new()
    } else {
        admin.list_offsets(&partitions, LATEST).await?
    };
    let rows: Vec<LagRow> = partitions
        .iter()
        .map(|tp| LagRow {
            topic: tp.0.clone(),
            partition: tp.1,
            committed: committed.get(tp).map(|c| c.offset),
            log_end: log_ends.get(tp).copied().unwrap_or(-1),
            member: owners.get(tp).cloned(),
        })
        .collect();
    match output {
        Output::Json => {
            let members: Vec<_> = description
                .members
                .iter()
                .map(|m| {
                    json!({
                        "member_id": m.member_id,
                        "group_instance_id": m.group_instance_id,
                        "client_id": m.client_id,
                        "host": m.client_host,
                        "partitions": m.assignment.iter().map(|(t, p)| json!({"topic": t, "partition": p})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let offsets: Vec<_> = rows
                .iter()
                .map(|r| {
                    json!({
                        "topic": r.topic,
                        "partition": r.partition,
                        "committed_offset": r.committed,
                        "log_end_offset": r.log_end,
                        "lag": r.lag(),
                        "member_id": r.member.as_ref().map(|m| m.0.clone()),
                    })
                })
                .collect();
            let total_lag: i64 = rows.iter().filter_map(LagRow::lag).sum();
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({
                    "group": description.group_id,
                    "state": description.state,
                    "protocol_type": description.protocol_type,
                    "protocol": description.protocol,
                    "members": members,
                    "offsets": offsets,
                    "total_lag": total_lag,
                }))?
            );
        }
        Output::Table => {
            println!(
                "GROUP {}  STATE {}  PROTOCOL {}  MEMBERS {}",
                description.group_id,
                description.state,
                if description.protocol.is_empty() {
                    "-"
                } else {
                    &description.protocol
                },
                description.members.len()
            );
            let dash = || "-".to_string();
            let table = rows
                .iter()
                .map(|r| {
                    vec![
                        r.topic.clone(),
                        r.partition.to_string(),
                        r.committed.map(|c| c.to_string()).unwrap_or_else(dash),
                        r.log_end.to_string(),
                        r.lag().map(|l| l.to_string()).unwrap_or_else(dash),
                        r.member.as_ref().map(|m| m.0.clone()).unwrap_or_else(dash),
                        r.member.as_ref().map(|m| m.1.clone()).unwrap_or_else(dash),
                        r.member.as_ref().map(|m| m.2.clone()).unwrap_or_else(dash),
                    ]
                })
                .collect();
            print_table(
                &[
                    "TOPIC",
                    "PARTITION",
                    "COMMITTED-OFFSET",
                    "LOG-END-OFFSET",
                    "LAG",
                    "MEMBER-ID",
                    "CLIENT-ID",
                    "HOST",
                ],
                table,
            );
        }
    }
    Ok(())
}

async fn reset_offsets(admin: &mut Admin, args: ResetArgs, output: Output) -> anyhow::Result<()> {
    let description = admin.describe_group(&args.group).await?;
    if !description.members.is_empty() {
        bail!(
            "group `{}` has {} active member(s) (state {}); stop its consumers before resetting offsets",
            args.group,
            description.members.len(),
            description.state
        );
    }
    if !args.partition.is_empty() && args.topic.len() != 1 {
        bail!("--partition needs exactly one --topic");
    }
    let mut partitions = Vec::new();
    for topic in &args.topic {
        let all = admin.partitions_of(topic).await?;
        for tp in all {
            if args.partition.is_empty() || args.partition.contains(&tp.1) {
                partitions.push(tp);
            }
        }
    }
    if partitions.is_empty() {
        bail!("no partitions matched");
    }
    let earliest = admin.list_offsets(&partitions, EARLIEST).await?;
    let latest = admin.list_offsets(&partitions, LATEST).await?;
    let targets: BTreeMap<TopicPartition, i64> = if args.to_earliest {
        earliest.clone()
    } else if args.to_latest {
        latest.clone()
    } else if let Some(timestamp) = args.to_timestamp {
        if timestamp < 0 {
            bail!("--to-timestamp must be milliseconds since the epoch, got {timestamp}");
        }
        let found = admin.list_offsets(&partitions, timestamp).await?;
        // No record at or after the timestamp: the end of the partition.
        found
            .into_iter()
            .map(|(tp, offset)| {
                let end = latest.get(&tp).copied().unwrap_or(offset);
                (tp, if offset < 0 { end } else { offset })
            })
            .collect()
    } else if let Some(offset) = args.to_offset {
        partitions
            .iter()
            .map(|tp| {
                let low = earliest.get(tp).copied().unwrap_or(0);
                let high = latest.get(tp).copied().unwrap_or(offset);
                (tp.clone(), offset.clamp(low, high.max(low)))
            })
            .collect()
    } else {
        bail!("say where to: --to-earliest, --to-latest, --to-timestamp MS or --to-offset N");
    };
    if !args.dry_run {
        admin.commit_offsets(&args.group, &targets).await?;
    }
    match output {
        Output::Json => {
            let rows: Vec<_> = targets
                .iter()
                .map(|((t, p), o)| json!({"topic": t, "partition": p, "new_offset": o}))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"group": args.group, "committed": !args.dry_run, "offsets": rows})
                )?
            );
        }
        Output::Table => {
            let rows = targets
                .iter()
                .map(|((t, p), o)| vec![t.clone(), p.to_string(), o.to_string()])
                .collect();
            print_table(&["TOPIC", "PARTITION", "NEW-OFFSET"], rows);
            if args.dry_run {
                println!("(dry run: nothing committed)");
            }
        }
    }
    Ok(())
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    for row in rows {
        println!("{}", line(row));
    }
}
