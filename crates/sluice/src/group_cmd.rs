//! `sluice group list|describe|reset-offsets|delete`: consumer groups and their lag,
//! against any Kafka-compatible bootstrap address.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::json;
use sluice_client::admin::{TopicPartition, EARLIEST, LATEST};
use sluice_client::Admin;

use crate::output::{self, not_found, print_json, print_table, CommonArgs, Output};

/// Kafka's code for NON_EMPTY_GROUP: the group still has members.
const NON_EMPTY_GROUP: i16 = 68;

#[derive(Args)]
#[command(after_help = output::EXIT_CODES_HELP)]
pub struct GroupArgs {
    #[command(flatten)]
    common: CommonArgs,
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
    /// Delete groups and their committed offsets (only groups without members).
    Delete {
        #[arg(required = true)]
        groups: Vec<String>,
    },
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
    let mut admin = output::connect(&args.common).await?;
    let out = args.common.output;
    match args.command {
        GroupCommand::List => list(&mut admin, out).await,
        GroupCommand::Describe { group } => describe(&mut admin, &group, out).await,
        GroupCommand::ResetOffsets(reset) => reset_offsets(&mut admin, reset, out).await,
        GroupCommand::Delete { groups } => delete(&mut admin, &groups, out).await,
    }
}

fn group_not_found(group: &str) -> anyhow::Error {
    not_found(format!(
        "group `{group}` does not exist; list groups with `sluice group list`"
    ))
}

async fn delete(admin: &mut Admin, groups: &[String], out: Output) -> anyhow::Result<()> {
    let results = admin.delete_groups(groups).await?;
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    for group in groups {
        let status = match results.get(group) {
            Some(Ok(())) => "deleted".to_string(),
            Some(Err(error)) if error.is_not_found() => {
                missing.push(group.clone());
                "does not exist".to_string()
            }
            Some(Err(error)) if error.kafka_code() == Some(NON_EMPTY_GROUP) => {
                failed.push(format!(
                    "group `{group}` has active members; stop its consumers first"
                ));
                "has members".to_string()
            }
            Some(Err(error)) => {
                failed.push(format!("{group}: {error}"));
                format!("failed: {error}")
            }
            None => {
                failed.push(format!("{group}: not in the broker's answer"));
                "unknown".to_string()
            }
        };
        rows.push((group.clone(), status));
    }
    match out {
        Output::Json => print_json(&json!(rows
            .iter()
            .map(|(group, status)| json!({"group": group, "status": status}))
            .collect::<Vec<_>>()))?,
        Output::Table => print_table(
            &["GROUP", "STATUS"],
            rows.into_iter().map(|(g, s)| vec![g, s]).collect(),
        ),
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    if let [group] = missing.as_slice() {
        return Err(group_not_found(group));
    }
    if !missing.is_empty() {
        return Err(not_found(format!(
            "groups {} do not exist; list groups with `sluice group list`",
            missing
                .iter()
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
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
    // Kafka describes a group it does not know as Dead, without an error.
    if description.state == "Dead" && committed.is_empty() {
        return Err(group_not_found(group));
    }
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
