//! Every `Admin` call against the real broker, started in-process.

mod common;

use common::start_broker;
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::records::Compression;
use sluice_client::admin::{
    AlterConfigOp, ConfigResource, ConfigSource, NewTopic, EARLIEST, LATEST,
};
use sluice_client::producer::{encode_batch, OutgoingRecord};
use sluice_client::topics::describe_topic;
use sluice_client::{Admin, BatchProducer, ClientError, ProducerConfig};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Produces `count` records to `partition` of `topic` through the SDK's BatchProducer.
async fn produce(bootstrap: &str, topic: &str, partition: i32, count: usize) {
    let layout = describe_topic(bootstrap, topic, TIMEOUT).await.unwrap();
    let producer = BatchProducer::connect(layout, ProducerConfig::default())
        .await
        .unwrap();
    let records: Vec<OutgoingRecord> = (0..count)
        .map(|i| OutgoingRecord {
            timestamp_ms: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(Bytes::from(format!("v{i}"))),
        })
        .collect();
    let batch = encode_batch(&records, Compression::None).unwrap();
    let acks = producer
        .send(partition, batch)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    for (_, ack) in acks {
        ack.unwrap();
    }
}

fn config<'a>(
    entries: &'a [sluice_client::admin::ConfigEntry],
    name: &str,
) -> &'a sluice_client::admin::ConfigEntry {
    entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("no config {name} in {entries:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_lifecycle_create_list_describe_alter_grow_delete() {
    let (_broker, _dir, bootstrap) = start_broker(&[]).await;
    let mut admin = Admin::connect(&bootstrap, TIMEOUT).await.unwrap();

    // validate_only checks without creating.
    let validated = admin
        .create_topics(&[NewTopic::new("orders").with_partitions(3)], true)
        .await
        .unwrap();
    assert!(validated["orders"].is_ok(), "{validated:?}");
    assert!(!admin
        .list_topics(false)
        .await
        .unwrap()
        .iter()
        .any(|t| t.name == "orders"));

    let created = admin
        .create_topic(
            NewTopic::new("orders")
                .with_partitions(3)
                .with_replication_factor(1)
                .with_config("retention.ms", "12345"),
        )
        .await
        .unwrap();
    assert_eq!(created.name, "orders");
    assert_eq!(created.num_partitions, 3);
    assert_eq!(created.replication_factor, 1);

    let again = admin
        .create_topics(&[NewTopic::new("orders").with_partitions(3)], false)
        .await
        .unwrap();
    match &again["orders"] {
        Err(ClientError::Kafka { name, code, .. }) => {
            assert_eq!((name.as_str(), *code), ("TOPIC_ALREADY_EXISTS", 36))
        }
        other => panic!("expected TOPIC_ALREADY_EXISTS, got {other:?}"),
    }

    let listed = admin.list_topics(false).await.unwrap();
    let orders = listed.iter().find(|t| t.name == "orders").unwrap();
    assert_eq!(orders.partition_count, 3);
    assert!(!orders.internal);

    let described = admin
        .describe_topics(&["orders".to_string()])
        .await
        .unwrap();
    assert_eq!(described.len(), 1);
    let topic = &described[0];
    assert_eq!(topic.name, "orders");
    assert_eq!(topic.topic_id, orders.topic_id);
    assert_eq!(
        topic
            .partitions
            .iter()
            .map(|p| p.partition)
            .collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let cluster = admin.describe_cluster().await.unwrap();
    let node = cluster.brokers[0].id;
    for partition in &topic.partitions {
        assert_eq!(partition.leader, Some(node));
        assert_eq!(partition.replicas, vec![node]);
        assert_eq!(partition.isr, vec![node]);
    }

    // Configs: the one set at creation is a dynamic topic config, others are defaults.
    let resource = ConfigResource::Topic("orders".to_string());
    let configs = admin.describe_configs(&resource).await.unwrap();
    let retention = config(&configs, "retention.ms");
    assert_eq!(retention.value.as_deref(), Some("12345"));
    assert_eq!(retention.source, ConfigSource::DynamicTopic);
    assert!(!retention.is_default);
    let cleanup = config(&configs, "cleanup.policy");
    assert!(cleanup.is_default, "{cleanup:?}");

    // IncrementalAlterConfigs: set one, leave the other untouched, then delete.
    admin
        .alter_configs(
            &resource,
            &[AlterConfigOp::Set {
                name: "segment.bytes".into(),
                value: "1048576".into(),
            }],
            false,
        )
        .await
        .unwrap();
    let configs = admin.describe_configs(&resource).await.unwrap();
    assert_eq!(
        config(&configs, "segment.bytes").value.as_deref(),
        Some("1048576")
    );
    assert_eq!(
        config(&configs, "retention.ms").value.as_deref(),
        Some("12345")
    );
    admin
        .alter_configs(
            &resource,
            &[AlterConfigOp::Delete {
                name: "retention.ms".into(),
            }],
            false,
        )
        .await
        .unwrap();
    let configs = admin.describe_configs(&resource).await.unwrap();
    assert!(config(&configs, "retention.ms").is_default);
    assert_ne!(
        config(&configs, "retention.ms").value.as_deref(),
        Some("12345")
    );

    // List configs: append to and subtract from cleanup.policy.
    admin
        .alter_configs(
            &resource,
            &[AlterConfigOp::Append {
                name: "cleanup.policy".into(),
                value: "compact".into(),
            }],
            false,
        )
        .await
        .unwrap();
    let configs = admin.describe_configs(&resource).await.unwrap();
    assert_eq!(
        config(&configs, "cleanup.policy").value.as_deref(),
        Some("delete,compact")
    );
    admin
        .alter_configs(
            &resource,
            &[AlterConfigOp::Subtract {
                name: "cleanup.policy".into(),
                value: "delete".into(),
            }],
            false,
        )
        .await
        .unwrap();
    let configs = admin.describe_configs(&resource).await.unwrap();
    assert_eq!(
        config(&configs, "cleanup.policy").value.as_deref(),
        Some("compact")
    );

    // validate_only changes nothing; an unknown config is the broker's INVALID_CONFIG.
    admin
        .alter_configs(
            &resource,
            &[AlterConfigOp::Set {
                name: "segment.bytes".into(),
                value: "2097152".into(),
            }],
            true,
        )
        .await
        .unwrap();
    let configs = admin.describe_configs(&resource).await.unwrap();
    assert_eq!(
        config(&configs, "segment.bytes").value.as_deref(),
        Some("1048576")
    );
    let error = admin
        .alter_configs(
            &resource,
            &[AlterConfigOp::Set {
                name: "no.such.config".into(),
                value: "1".into(),
            }],
            false,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ClientError::Kafka { name, .. } if name == "INVALID_CONFIG"),
        "{error}"
    );

    // More partitions; fewer is refused.
    let grown = admin
        .create_partitions(&BTreeMap::from([("orders".to_string(), 5)]), false)
        .await
        .unwrap();
    assert!(grown["orders"].is_ok(), "{grown:?}");
    let described = admin
        .describe_topics(&["orders".to_string()])
        .await
        .unwrap();
    assert_eq!(described[0].partitions.len(), 5);
    let shrunk = admin
        .create_partitions(&BTreeMap::from([("orders".to_string(), 2)]), false)
        .await
        .unwrap();
    assert_eq!(
        shrunk["orders"].as_ref().unwrap_err().kafka_code(),
        Some(37) // INVALID_PARTITIONS
    );

    // Delete; afterwards the topic is unknown everywhere.
    let deleted = admin.delete_topics(&["orders".to_string()]).await.unwrap();
    assert!(deleted["orders"].is_ok(), "{deleted:?}");
    let error = admin
        .describe_topics(&["orders".to_string()])
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert!(error.to_string().contains("UNKNOWN_TOPIC_OR_PARTITION"));
    let deleted_again = admin.delete_topics(&["orders".to_string()]).await.unwrap();
    assert!(deleted_again["orders"].as_ref().unwrap_err().is_not_found());
    let error = admin
        .describe_configs(&ConfigResource::Topic("orders".to_string()))
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_and_broker_configs() {
    let (broker, _dir, bootstrap) = start_broker(&[]).await;
    let mut admin = Admin::connect(&bootstrap, TIMEOUT).await.unwrap();
    let cluster = admin.describe_cluster().await.unwrap();
    assert!(cluster
        .cluster_id
        .as_deref()
        .is_some_and(|id| !id.is_empty()));
    assert_eq!(cluster.brokers.len(), 1);
    assert_eq!(cluster.brokers[0].address(), broker.local_addr.to_string());
    assert_eq!(
        cluster.controller().map(|c| c.id),
        Some(cluster.brokers[0].id)
    );

    let configs = admin
        .describe_configs(&ConfigResource::Broker(cluster.brokers[0].id))
        .await
        .unwrap();
    assert!(!configs.is_empty());
    assert!(
        configs.iter().any(|c| c.name == "num.partitions"),
        "{configs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_describe_delete_offsets_and_delete_group() {
    let (_broker, _dir, bootstrap) = start_broker(&[]).await;
    let mut admin = Admin::connect(&bootstrap, TIMEOUT).await.unwrap();
    admin
        .create_topic(NewTopic::new("events").with_partitions(2))
        .await
        .unwrap();
    produce(&bootstrap, "events", 0, 10).await;
    produce(&bootstrap, "events", 1, 3).await;

    // A raw commit (generation -1, as offset tools do) creates the group.
    admin
        .commit_offsets(
            "billing",
            &BTreeMap::from([
                (("events".to_string(), 0), 4),
                (("events".to_string(), 1), 3),
            ]),
        )
        .await
        .unwrap();
    let description = admin.describe_group("billing").await.unwrap();
    assert_eq!(description.state, "Empty");
    assert!(description.members.is_empty());
    let committed = admin.committed_offsets("billing").await.unwrap();
    assert_eq!(committed[&("events".to_string(), 0)].offset, 4);
    let ends = admin
        .list_offsets(
            &[("events".to_string(), 0), ("events".to_string(), 1)],
            LATEST,
        )
        .await
        .unwrap();
    assert_eq!(ends[&("events".to_string(), 0)], 10);
    assert_eq!(ends[&("events".to_string(), 1)], 3);
    assert!(admin
        .list_groups()
        .await
        .unwrap()
        .iter()
        .any(|g| g.group_id == "billing"));

    // OffsetDelete removes one partition's offset only.
    admin
        .delete_committed_offsets("billing", &[("events".to_string(), 0)])
        .await
        .unwrap();
    let committed = admin.committed_offsets("billing").await.unwrap();
    assert!(!committed.contains_key(&("events".to_string(), 0)));
    assert_eq!(committed[&("events".to_string(), 1)].offset, 3);

    // DeleteGroups removes the group and its offsets.
    let deleted = admin.delete_groups(&["billing".to_string()]).await.unwrap();
    assert!(deleted["billing"].is_ok(), "{deleted:?}");
    assert_eq!(admin.describe_group("billing").await.unwrap().state, "Dead");
    assert!(admin.committed_offsets("billing").await.unwrap().is_empty());
    let again = admin.delete_groups(&["billing".to_string()]).await.unwrap();
    let error = again["billing"].as_ref().unwrap_err();
    assert!(error.is_not_found(), "{error}");
    assert!(error.to_string().contains("GROUP_ID_NOT_FOUND"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_the_log_start() {
    let (_broker, _dir, bootstrap) = start_broker(&[]).await;
    let mut admin = Admin::connect(&bootstrap, TIMEOUT).await.unwrap();
    admin
        .create_topic(NewTopic::new("audit").with_partitions(1))
        .await
        .unwrap();
    produce(&bootstrap, "audit", 0, 10).await;
    let tp = ("audit".to_string(), 0);
    assert_eq!(
        admin
            .list_offsets(std::slice::from_ref(&tp), EARLIEST)
            .await
            .unwrap()[&tp],
        0
    );
    let low = admin
        .delete_records(&BTreeMap::from([(tp.clone(), 6)]))
        .await
        .unwrap();
    assert_eq!(low[&tp], 6);
    assert_eq!(
        admin
            .list_offsets(std::slice::from_ref(&tp), EARLIEST)
            .await
            .unwrap()[&tp],
        6
    );
    assert_eq!(
        admin
            .list_offsets(std::slice::from_ref(&tp), LATEST)
            .await
            .unwrap()[&tp],
        10
    );

    let error = admin
        .delete_records(&BTreeMap::from([(("nope".to_string(), 0), 1)]))
        .await
        .unwrap_err();
    assert!(error.is_not_found(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_nothing_listens_on_is_unreachable() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let error = match Admin::connect(&format!("127.0.0.1:{port}"), TIMEOUT).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(error) => error,
    };
    assert!(error.is_unreachable(), "{error}");
}
