//! AlterConfigs and IncrementalAlterConfigs over a real socket, every advertised version:
//! topic overrides and dynamic broker settings are validated, persisted across a restart,
//! visible in DescribeConfigs with the right source, and applied without a restart.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use common::{create_topic, produce_to, start_broker_in, versions, Client};

const TOPIC: i8 = 2;
const BROKER: i8 = 4;
const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

async fn start(dir: &std::path::Path) -> sluice_broker::RunningBroker {
    start_broker_in(dir, &[]).await
}

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// (value, source) of every setting of a resource.
async fn describe(
    client: &mut Client,
    resource_type: i8,
    resource: &str,
) -> BTreeMap<String, (String, i8)> {
    let request = DescribeConfigsRequest::default().with_resources(vec![
        describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(text(resource))
            .with_configuration_keys(None),
    ]);
    let response: DescribeConfigsResponse = client.call(ApiKey::DescribeConfigs, 4, &request).await;
    assert_eq!(response.results[0].error_code, 0);
    response.results[0]
        .configs
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                (
                    c.value.as_deref().unwrap_or("").to_string(),
                    c.config_source,
                ),
            )
        })
        .collect()
}

async fn alter(
    client: &mut Client,
    version: i16,
    resource_type: i8,
    resource: &str,
    configs: &[(&str, &str)],
    validate_only: bool,
) -> (i16, Option<String>) {
    let request = AlterConfigsRequest::default()
        .with_resources(vec![alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(text(resource))
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        alter_configs_request::AlterableConfig::default()
                            .with_name(text(k))
                            .with_value(Some(text(v)))
                    })
                    .collect(),
            )])
        .with_validate_only(validate_only);
    let response: AlterConfigsResponse = client.call(ApiKey::AlterConfigs, version, &request).await;
    let result = &response.responses[0];
    (
        result.error_code,
        result.error_message.as_ref().map(|m| m.to_string()),
    )
}

async fn incremental(
    client: &mut Client,
    version: i16,
    resource_type: i8,
    resource: &str,
    ops: &[(&str, i8, Option<&str>)],
) -> (i16, Option<String>) {
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        incremental_alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(text(resource))
            .with_configs(
                ops.iter()
                    .map(|(k, op, v)| {
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(text(k))
                            .with_config_operation(*op)
                            .with_value(v.map(text))
                    })
                    .collect(),
            ),
    ]);
    let response: IncrementalAlterConfigsResponse = client
        .call(ApiKey::IncrementalAlterConfigs, version, &request)
        .await;
    let result = &response.responses[0];
    (
        result.error_code,
        result.error_message.as_ref().map(|m| m.to_string()),
    )
}

async fn produce_code(client: &mut Client, topic: &str, batch: Vec<u8>) -> i16 {
    produce_to(client, 9, topic, 1, Bytes::from(batch))
        .await
        .error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_configs_every_version_replaces_topic_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let mut client = Client::connect(broker.local_addr).await;
    create_topic(&mut client, "altered", 1).await;
    for version in versions(ApiKey::AlterConfigs) {
        let retention = format!("{}", 60_000 + i64::from(version));
        let (code, message) = alter(
            &mut client,
            version,
            TOPIC,
            "altered",
            &[("retention.ms", &retention), ("cleanup.policy", "compact")],
            false,
        )
        .await;
        assert_eq!(code, 0, "v{version}: {message:?}");
        let configs = describe(&mut client, TOPIC, "altered").await;
        assert_eq!(configs["retention.ms"], (retention.clone(), 1));
        assert_eq!(configs["cleanup.policy"], ("compact".to_string(), 1));
        // AlterConfigs replaces the whole set: what is not named goes back to the default.
        let (code, _) = alter(&mut client, version, TOPIC, "altered", &[], false).await;
        assert_eq!(code, 0);
        let configs = describe(&mut client, TOPIC, "altered").await;
        assert_eq!(configs["retention.ms"], ("604800000".to_string(), 5));
        assert_eq!(configs["cleanup.policy"], ("delete".to_string(), 5));
        // Validation: bad value, unknown key, unknown topic, validate_only.
        let (code, message) = alter(
            &mut client,
            version,
            TOPIC,
            "altered",
            &[("retention.ms", "soon")],
            false,
        )
        .await;
        assert_eq!(code, 40, "INVALID_CONFIG");
        assert!(message.unwrap().contains("retention.ms"));
        let (code, _) = alter(
            &mut client,
            version,
            TOPIC,
            "altered",
            &[("no.such.setting", "1")],
            false,
        )
        .await;
        assert_eq!(code, 40);
        let (code, _) = alter(&mut client, version, TOPIC, "missing", &[], false).await;
        assert_eq!(code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
        let (code, _) = alter(
            &mut client,
            version,
            TOPIC,
            "altered",
            &[("segment.ms", "1000")],
            true,
        )
        .await;
        assert_eq!(code, 0);
        let configs = describe(&mut client, TOPIC, "altered").await;
        assert_eq!(configs["segment.ms"].1, 5, "validate_only changed nothing");
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_alter_configs_every_version_and_op() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let mut client = Client::connect(broker.local_addr).await;
    create_topic(&mut client, "incremental", 1).await;
    for version in versions(ApiKey::IncrementalAlterConfigs) {
        let ok = |result: (i16, Option<String>)| assert_eq!(result.0, 0, "{result:?}");
        ok(incremental(
            &mut client,
            version,
            TOPIC,
            "incremental",
            &[("retention.bytes", SET, Some("1000000"))],
        )
        .await);
        // APPEND starts from the effective value (the default `delete`).
        ok(incremental(
            &mut client,
            version,
            TOPIC,
            "incremental",
            &[("cleanup.policy", APPEND, Some("compact"))],
        )
        .await);
        let configs = describe(&mut client, TOPIC, "incremental").await;
        assert_eq!(configs["cleanup.policy"].0, "delete,compact");
        assert_eq!(configs["retention.bytes"], ("1000000".to_string(), 1));
        ok(incremental(
            &mut client,
            version,
            TOPIC,
            "incremental",
            &[("cleanup.policy", SUBTRACT, Some("delete"))],
        )
        .await);
        let configs = describe(&mut client, TOPIC, "incremental").await;
        assert_eq!(configs["cleanup.policy"].0, "compact");
        assert_eq!(configs["retention.bytes"].0, "1000000", "others untouched");
        ok(incremental(
            &mut client,
            version,
            TOPIC,
            "incremental",
            &[
                ("cleanup.policy", DELETE, None),
                ("retention.bytes", DELETE, None),
            ],
        )
        .await);
        let configs = describe(&mut client, TOPIC, "incremental").await;
        assert_eq!(configs["cleanup.policy"], ("delete".to_string(), 5));
        assert_eq!(configs["retention.bytes"], ("-1".to_string(), 5));
        // APPEND on a setting that is not a list, a duplicate key, an unknown operation.
        let (code, _) = incremental(
            &mut client,
            version,
            TOPIC,
            "incremental",
            &[("retention.ms", APPEND, Some("5"))],
        )
        .await;
        assert_eq!(code, 40);
        let (code, _) = incremental(
            &mut client,
            version,
            TOPIC,
            "incremental",
            &[
                ("retention.ms", SET, Some("5")),
                ("retention.ms", DELETE, None),
            ],
        )
        .await;
        assert_eq!(code, 42, "INVALID_REQUEST");
        let (code, _) = incremental(
            &mut client,
            version,
            TOPIC,
            "incremental",
            &[("retention.ms", 9, Some("5"))],
        )
        .await;
        assert_eq!(code, 42);
        let (code, _) = incremental(
            &mut client,
            version,
            TOPIC,
            "incremental",
            &[("cleanup.policy", SET, Some("shred"))],
        )
        .await;
        assert_eq!(code, 40);
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_settings_apply_at_once_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let mut client = Client::connect(broker.local_addr).await;
    create_topic(&mut client, "limits", 1).await;
    let batch = sluice_log::testing::batch(4, 500, 1_000);
    assert_eq!(produce_code(&mut client, "limits", batch.clone()).await, 0);
    let (code, _) = incremental(
        &mut client,
        1,
        TOPIC,
        "limits",
        &[("max.message.bytes", SET, Some("1000"))],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        produce_code(&mut client, "limits", batch.clone()).await,
        10,
        "MESSAGE_TOO_LARGE right after the change, no restart"
    );
    broker.shutdown().await;

    let broker = start(dir.path()).await;
    let mut client = Client::connect(broker.local_addr).await;
    let configs = describe(&mut client, TOPIC, "limits").await;
    assert_eq!(configs["max.message.bytes"], ("1000".to_string(), 1));
    assert_eq!(produce_code(&mut client, "limits", batch).await, 10);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_broker_settings_are_layered_applied_and_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let mut client = Client::connect(broker.local_addr).await;
    create_topic(&mut client, "follows-broker", 1).await;
    // Cluster-wide default (empty name), then this broker (its id).
    let (code, message) = incremental(
        &mut client,
        1,
        BROKER,
        "",
        &[("log.retention.ms", SET, Some("3600000"))],
    )
    .await;
    assert_eq!(code, 0, "{message:?}");
    let configs = describe(&mut client, TOPIC, "follows-broker").await;
    assert_eq!(configs["retention.ms"], ("3600000".to_string(), 3));
    let (code, _) = alter(
        &mut client,
        2,
        BROKER,
        "1",
        &[("message.max.bytes", "1000")],
        false,
    )
    .await;
    assert_eq!(code, 0);
    let configs = describe(&mut client, TOPIC, "follows-broker").await;
    assert_eq!(configs["max.message.bytes"], ("1000".to_string(), 2));
    let broker_configs = describe(&mut client, BROKER, "1").await;
    assert_eq!(broker_configs["message.max.bytes"], ("1000".to_string(), 2));
    assert_eq!(
        broker_configs["log.retention.ms"],
        ("3600000".to_string(), 3)
    );
    let batch = sluice_log::testing::batch(4, 500, 1_000);
    assert_eq!(
        produce_code(&mut client, "follows-broker", batch.clone()).await,
        10,
        "the dynamic default applies to topics without an override"
    );
    // Static settings cannot change at run time; other brokers are not this one.
    let (code, message) = incremental(
        &mut client,
        1,
        BROKER,
        "1",
        &[("log.dirs", SET, Some("/tmp/elsewhere"))],
    )
    .await;
    assert_eq!(code, 40);
    assert!(message.unwrap().contains("restart"));
    let (code, _) = incremental(&mut client, 1, BROKER, "7", &[]).await;
    assert_eq!(code, 42);
    broker.shutdown().await;

    let broker = start(dir.path()).await;
    let mut client = Client::connect(broker.local_addr).await;
    let configs = describe(&mut client, TOPIC, "follows-broker").await;
    assert_eq!(configs["retention.ms"], ("3600000".to_string(), 3));
    assert_eq!(configs["max.message.bytes"], ("1000".to_string(), 2));
    assert_eq!(
        produce_code(&mut client, "follows-broker", batch.clone()).await,
        10
    );
    // Deleting the per-broker value falls back to the static/default value.
    let (code, _) = incremental(
        &mut client,
        0,
        BROKER,
        "1",
        &[("message.max.bytes", DELETE, None)],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(produce_code(&mut client, "follows-broker", batch).await, 0);
    broker.shutdown().await;
}
