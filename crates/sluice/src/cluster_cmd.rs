//! `sluice cluster info`: cluster id, controller, brokers, topic and partition counts.

use clap::{Args, Subcommand};
use serde_json::json;

use crate::output::{self, print_json, print_table, CommonArgs, Output};

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
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let mut admin = output::connect(&args.common).await?;
    match args.command {
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
