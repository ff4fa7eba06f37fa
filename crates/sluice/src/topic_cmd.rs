//! `sluice topic create|list|describe|alter|delete`, on the SDK's [`Admin`], against any
//! Kafka-compatible bootstrap address.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;
use sluice_client::admin::{
    AlterConfigOp, ConfigEntry, ConfigResource, NewTopic, TopicDescription, TopicPartition,
    EARLIEST, LATEST,
};
use sluice_client::{Admin, ClientError};

use crate::output::{self, not_found, print_json, print_table, CommonArgs, Output};

/// Kafka's code for TOPIC_ALREADY_EXISTS.
const TOPIC_ALREADY_EXISTS: i16 = 36;

#[derive(Args)]
#[command(after_help = output::EXIT_CODES_HELP)]
pub struct TopicArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: TopicCommand,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List topics with their partition counts.
    List {
        /// Include internal topics such as `__consumer_offsets`.
        #[arg(long)]
        internal: bool,
    },
    /// Partitions (leader, replicas, ISR, log start and end offsets) and non-default configs.
    Describe { name: String },
    /// Add partitions or change configs.
    Alter(AlterArgs),
    /// Delete topics and all their records.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
        /// Succeed when a topic does not exist.
        #[arg(long)]
        if_exists: bool,
    },
}

#[derive(Args)]
struct CreateArgs {
    name: String,
    /// Partition count [default: the broker's num.partitions].
    #[arg(long, short = 'p')]
    partitions: Option<i32>,
    /// Replication factor [default: the broker's default.replication.factor].
    #[arg(long, short = 'r')]
    replication_factor: Option<i16>,
    /// A topic config under Kafka's name, e.g. `-c retention.ms=86400000`; repeatable.
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = output::parse_key_value)]
    configs: Vec<(String, String)>,
    /// Succeed when the topic already exists.
    #[arg(long)]
    if_not_exists: bool,
}

#[derive(Args)]
struct AlterArgs {
    name: String,
    /// New total partition count (can only grow).
    #[arg(long)]
    partitions: Option<i32>,
    /// Set a topic config, e.g. `--set retention.ms=3600000`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = output::parse_key_value)]
    set: Vec<(String, String)>,
    /// Remove a config override (back to the broker default); repeatable.
    #[arg(long = "delete", value_name = "KEY")]
    delete: Vec<String>,
}

pub async fn run(args: TopicArgs) -> anyhow::Result<()> {
    let mut admin = output::connect(&args.common).await?;
    let out = args.common.output;
    match args.command {
        TopicCommand::Create(create_args) => create(&mut admin, create_args, out).await,
        TopicCommand::List { internal } => list(&mut admin, internal, out).await,
        TopicCommand::Describe { name } => describe(&mut admin, &name, out).await,
        TopicCommand::Alter(alter_args) => alter(&mut admin, alter_args, out).await,
        TopicCommand::Delete { names, if_exists } => {
            delete(&mut admin, &names, if_exists, out).await
        }
    }
}

fn topic_not_found(name: &str) -> anyhow::Error {
    not_found(format!(
        "topic `{name}` does not exist; list topics with `sluice topic list`"
    ))
}

/// Maps "unknown topic" to exit code 3 with a hint; other errors keep their cause.
fn on_topic(name: &str, error: ClientError) -> anyhow::Error {
    if error.is_not_found() {
        topic_not_found(name)
    } else {
        anyhow::Error::new(error)
    }
}

async fn create(admin: &mut Admin, args: CreateArgs, out: Output) -> anyhow::Result<()> {
    let mut topic = NewTopic::new(&args.name)
        .with_partitions(args.partitions.unwrap_or(-1))
        .with_replication_factor(args.replication_factor.unwrap_or(-1));
    for (key, value) in &args.configs {
        topic = topic.with_config(key, value);
    }
    let mut results = admin.create_topics(&[topic], false).await?;
    let result = results
        .remove(&args.name)
        .context("the broker's answer does not mention the topic")?;
    let created = match result {
        Ok(created) => created,
        Err(error) if error.kafka_code() == Some(TOPIC_ALREADY_EXISTS) && args.if_not_exists => {
            match out {
                Output::Json => print_json(&json!({"name": args.name, "created": false}))?,
                Output::Table => println!("topic `{}` already exists", args.name),
            }
            return Ok(());
        }
        Err(error) if error.kafka_code() == Some(TOPIC_ALREADY_EXISTS) => {
            return Err(anyhow::Error::new(error).context(format!(
                "topic `{}` already exists; pass --if-not-exists to accept that, or see it with `sluice topic describe {}`",
                args.name, args.name
            )))
        }
        Err(error) => return Err(error.into()),
    };
    match out {
        Output::Json => print_json(&json!({
            "name": created.name,
            "created": true,
            "topic_id": created.topic_id,
            "partitions": created.num_partitions,
            "replication_factor": created.replication_factor,
        }))?,
        Output::Table => println!(
            "created topic `{}` (partitions {}, replication factor {})",
            created.name,
            shown_count(created.num_partitions.into()),
            shown_count(created.replication_factor.into()),
        ),
    }
    Ok(())
}

/// `-1` (older brokers do not say) as `-`.
fn shown_count(count: i64) -> String {
    if count < 0 {
        "-".to_string()
    } else {
        count.to_string()
    }
}

async fn list(admin: &mut Admin, internal: bool, out: Output) -> anyhow::Result<()> {
    let topics = admin.list_topics(internal).await?;
    match out {
        Output::Json => print_json(&json!(topics
            .iter()
            .map(|t| json!({
                "name": t.name,
                "partitions": t.partition_count,
                "internal": t.internal,
                "topic_id": t.topic_id,
            }))
            .collect::<Vec<_>>()))?,
        Output::Table => print_table(
            &["TOPIC", "PARTITIONS", "INTERNAL", "TOPIC-ID"],
            topics
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.partition_count.to_string(),
                        t.internal.to_string(),
                        t.topic_id.clone().unwrap_or_else(|| "-".to_string()),
                    ]
                })
                .collect(),
        ),
    }
    Ok(())
}

/// Log start and end offsets of the partitions that have a leader.
async fn log_offsets(
    admin: &mut Admin,
    topic: &TopicDescription,
) -> anyhow::Result<(BTreeMap<TopicPartition, i64>, BTreeMap<TopicPartition, i64>)> {
    let led: Vec<TopicPartition> = topic
        .partitions
        .iter()
        .filter(|p| p.leader.is_some())
        .map(|p| (topic.name.clone(), p.partition))
        .collect();
    if led.is_empty() {
        return Ok((BTreeMap::new(), BTreeMap::new()));
    }
    let start = admin.list_offsets(&led, EARLIEST).await?;
    let end = admin.list_offsets(&led, LATEST).await?;
    Ok((start, end))
}

async fn describe(admin: &mut Admin, name: &str, out: Output) -> anyhow::Result<()> {
    let topic = admin
        .describe_topics(&[name.to_string()])
        .await
        .map_err(|e| on_topic(name, e))?
        .into_iter()
        .next()
        .ok_or_else(|| topic_not_found(name))?;
    let (start, end) = log_offsets(admin, &topic).await?;
    let configs: Vec<ConfigEntry> = admin
        .describe_configs(&ConfigResource::Topic(name.to_string()))
        .await
        .map_err(|e| on_topic(name, e))?
        .into_iter()
        .filter(|c| !c.is_default)
        .collect();
    let offset =
        |map: &BTreeMap<TopicPartition, i64>, p: i32| map.get(&(name.to_string(), p)).copied();
    match out {
        Output::Json => {
            let partitions: Vec<_> = topic
                .partitions
                .iter()
                .map(|p| {
                    json!({
                        "partition": p.partition,
                        "leader": p.leader,
                        "leader_epoch": p.leader_epoch,
                        "replicas": p.replicas,
                        "isr": p.isr,
                        "offline_replicas": p.offline_replicas,
                        "log_start_offset": offset(&start, p.partition),
                        "log_end_offset": offset(&end, p.partition),
                    })
                })
                .collect();
            let config_values: serde_json::Map<String, serde_json::Value> = configs
                .iter()
                .map(|c| (c.name.clone(), json!(c.value)))
                .collect();
            let config_details: Vec<_> = configs
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name,
                        "value": c.value,
                        "source": c.source.as_str(),
                        "read_only": c.read_only,
                        "sensitive": c.sensitive,
                    })
                })
                .collect();
            print_json(&json!({
                "name": topic.name,
                "topic_id": topic.topic_id,
                "internal": topic.internal,
                "partition_count": topic.partitions.len(),
                "partitions": partitions,
                "configs": config_values,
                "config_details": config_details,
            }))?;
        }
        Output::Table => {
            println!(
                "TOPIC {}  ID {}  PARTITIONS {}  INTERNAL {}",
                topic.name,
                topic.topic_id.as_deref().unwrap_or("-"),
                topic.partitions.len(),
                topic.internal
            );
            let dash = || "-".to_string();
            print_table(
                &[
                    "PARTITION",
                    "LEADER",
                    "REPLICAS",
                    "ISR",
                    "LOG-START",
                    "LOG-END",
                ],
                topic
                    .partitions
                    .iter()
                    .map(|p| {
                        vec![
                            p.partition.to_string(),
                            p.leader.map(|l| l.to_string()).unwrap_or_else(dash),
                            output::ids(&p.replicas),
                            output::ids(&p.isr),
                            offset(&start, p.partition)
                                .map(|o| o.to_string())
                                .unwrap_or_else(dash),
                            offset(&end, p.partition)
                                .map(|o| o.to_string())
                                .unwrap_or_else(dash),
                        ]
                    })
                    .collect(),
            );
            println!();
            if configs.is_empty() {
                println!("CONFIGS: all defaults");
            } else {
                print_table(
                    &["CONFIG", "VALUE", "SOURCE"],
                    configs
                        .iter()
                        .map(|c| {
                            vec![
                                c.name.clone(),
                                shown_value(c),
                                c.source.as_str().to_string(),
                            ]
                        })
                        .collect(),
                );
            }
        }
    }
    Ok(())
}

fn shown_value(config: &ConfigEntry) -> String {
    if config.sensitive {
        "(sensitive)".to_string()
    } else {
        config.value.clone().unwrap_or_else(|| "-".to_string())
    }
}

async fn alter(admin: &mut Admin, args: AlterArgs, out: Output) -> anyhow::Result<()> {
    if args.partitions.is_none() && args.set.is_empty() && args.delete.is_empty() {
        bail!("nothing to change; say what with --partitions N, --set KEY=VALUE or --delete KEY");
    }
    let topic = admin
        .describe_topics(std::slice::from_ref(&args.name))
        .await
        .map_err(|e| on_topic(&args.name, e))?
        .into_iter()
        .next()
        .ok_or_else(|| topic_not_found(&args.name))?;
    let mut changed = Vec::new();
    if let Some(partitions) = args.partitions {
        let current = topic.partitions.len();
        if usize::try_from(partitions).ok() != Some(current) {
            let mut results = admin
                .create_partitions(&BTreeMap::from([(args.name.clone(), partitions)]), false)
                .await?;
            if let Some(Err(error)) = results.remove(&args.name) {
                return Err(anyhow::Error::new(error).context(format!(
                    "cannot change `{}` from {current} to {partitions} partitions (partitions can only be added)",
                    args.name
                )));
            }
            changed.push(json!({"partitions": {"from": current, "to": partitions}}));
        }
    }
    let mut ops: Vec<AlterConfigOp> = args
        .set
        .iter()
        .map(|(name, value)| AlterConfigOp::Set {
            name: name.clone(),
            value: value.clone(),
        })
        .collect();
    ops.extend(
        args.delete
            .iter()
            .map(|name| AlterConfigOp::Delete { name: name.clone() }),
    );
    if !ops.is_empty() {
        admin
            .alter_configs(&ConfigResource::Topic(args.name.clone()), &ops, false)
            .await
            .map_err(|e| on_topic(&args.name, e))?;
        for (name, value) in &args.set {
            changed.push(json!({"set": {"name": name, "value": value}}));
        }
        for name in &args.delete {
            changed.push(json!({"delete": {"name": name}}));
        }
    }
    match out {
        Output::Json => print_json(&json!({"name": args.name, "changes": changed}))?,
        Output::Table => {
            if changed.is_empty() {
                println!("topic `{}`: nothing changed", args.name);
            }
            if let Some(partitions) = args.partitions {
                println!("topic `{}`: {partitions} partitions", args.name);
            }
            for (name, value) in &args.set {
                println!("topic `{}`: {name}={value}", args.name);
            }
            for name in &args.delete {
                println!("topic `{}`: {name} back to the default", args.name);
            }
        }
    }
    Ok(())
}

async fn delete(
    admin: &mut Admin,
    names: &[String],
    if_exists: bool,
    out: Output,
) -> anyhow::Result<()> {
    let results = admin.delete_topics(names).await?;
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    for name in names {
        let status = match results.get(name) {
            Some(Ok(())) => "deleted".to_string(),
            Some(Err(error)) if error.is_not_found() => {
                if !if_exists {
                    missing.push(name.clone());
                }
                "does not exist".to_string()
            }
            Some(Err(error)) => {
                failed.push(format!("{name}: {error}"));
                format!("failed: {error}")
            }
            None => {
                failed.push(format!("{name}: not in the broker's answer"));
                "unknown".to_string()
            }
        };
        rows.push((name.clone(), status));
    }
    match out {
        Output::Json => print_json(&json!(rows
            .iter()
            .map(|(name, status)| json!({"name": name, "status": status}))
            .collect::<Vec<_>>()))?,
        Output::Table => print_table(
            &["TOPIC", "STATUS"],
            rows.into_iter().map(|(n, s)| vec![n, s]).collect(),
        ),
    }
    if !failed.is_empty() {
        bail!("could not delete {}", failed.join("; "));
    }
    if !missing.is_empty() {
        return Err(not_found(format!(
            "topic {} does not exist; list topics with `sluice topic list`, or pass --if-exists",
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}
