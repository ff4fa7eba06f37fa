"""Topic and broker configuration changed at run time with real admin clients:
confluent-kafka's incremental_alter_configs / alter_configs and kafka-python's
alter_configs; values are validated, persisted across a SIGKILL and applied at once."""

import pytest
from confluent_kafka import KafkaException, KafkaError, Producer
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   ConfigSource, ResourceType)

from conftest import create_topic, unique_topic


def admin(broker):
    return AdminClient({"bootstrap.servers": broker.bootstrap})


def describe(a, resource_type, name):
    fs = a.describe_configs([ConfigResource(resource_type, name)])
    return list(fs.values())[0].result(timeout=15)


def incremental(a, resource_type, name, ops):
    entries = [ConfigEntry(key, value, incremental_operation=op) for key, op, value in ops]
    fs = a.incremental_alter_configs([ConfigResource(resource_type, name,
                                                     incremental_configs=entries)])
    return list(fs.values())[0].result(timeout=15)


def produce_one(bootstrap, topic, value):
    """Produce one record; returns the delivery error (None on success)."""
    outcome = []
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "retries": 0,
                  "message.max.bytes": 10_000_000})
    p.produce(topic, value=value, partition=0, on_delivery=lambda err, msg: outcome.append(err))
    p.flush(30)
    assert len(outcome) == 1
    return outcome[0]


def test_incremental_alter_configs_with_confluent_applies_at_once_and_persists(make_broker):
    broker = make_broker()
    topic = unique_topic("cfg")
    create_topic(broker.bootstrap, topic)
    a = admin(broker)
    assert produce_one(broker.bootstrap, topic, b"x" * 5000) is None

    incremental(a, ResourceType.TOPIC, topic, [
        ("max.message.bytes", AlterConfigOpType.SET, "2000"),
        ("retention.ms", AlterConfigOpType.SET, "3600000"),
        ("cleanup.policy", AlterConfigOpType.APPEND, "compact"),
    ])
    configs = describe(a, ResourceType.TOPIC, topic)
    assert configs["max.message.bytes"].value == "2000"
    assert configs["max.message.bytes"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert configs["retention.ms"].value == "3600000"
    assert configs["cleanup.policy"].value == "delete,compact"

    # Applied without a restart: the broker now refuses a 5000-byte batch.
    err = produce_one(broker.bootstrap, topic, b"x" * 5000)
    assert err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE

    # A bad value is refused with INVALID_CONFIG and changes nothing.
    with pytest.raises(KafkaException) as ei:
        incremental(a, ResourceType.TOPIC, topic,
                    [("retention.ms", AlterConfigOpType.SET, "soon")])
    assert ei.value.args[0].code() == KafkaError.INVALID_CONFIG
    assert describe(a, ResourceType.TOPIC, topic)["retention.ms"].value == "3600000"

    # Persisted: a SIGKILL and restart keep the overrides.
    broker.restart()
    a = admin(broker)
    configs = describe(a, ResourceType.TOPIC, topic)
    assert configs["max.message.bytes"].value == "2000"
    assert configs["cleanup.policy"].value == "delete,compact"

    incremental(a, ResourceType.TOPIC, topic, [
        ("max.message.bytes", AlterConfigOpType.DELETE, None),
        ("cleanup.policy", AlterConfigOpType.SUBTRACT, "compact"),
    ])
    configs = describe(a, ResourceType.TOPIC, topic)
    assert configs["max.message.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert configs["cleanup.policy"].value == "delete"
    assert produce_one(broker.bootstrap, topic, b"x" * 5000) is None


def test_dynamic_broker_config_is_the_default_of_topics_without_override(make_broker):
    broker = make_broker()
    topic = unique_topic("cfg-broker")
    create_topic(broker.bootstrap, topic)
    a = admin(broker)
    # This broker's dynamic layer (the cluster-wide default, an empty broker name, is
    # refused by both Python admin clients; the socket test in
    # crates/sluice-broker/tests/alter_configs.rs covers it).
    incremental(a, ResourceType.BROKER, "1",
                [("log.retention.ms", AlterConfigOpType.SET, "1800000")])
    configs = describe(a, ResourceType.TOPIC, topic)
    assert configs["retention.ms"].value == "1800000"
    assert configs["retention.ms"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    broker_configs = describe(a, ResourceType.BROKER, "1")
    assert broker_configs["log.retention.ms"].value == "1800000"
    assert broker_configs["log.retention.ms"].source == ConfigSource.DYNAMIC_BROKER_CONFIG.value
    assert not broker_configs["log.retention.ms"].is_read_only
    assert broker_configs["log.dirs"].is_read_only
    # A static setting cannot change at run time.
    with pytest.raises(KafkaException) as ei:
        incremental(a, ResourceType.BROKER, "1",
                    [("listeners", AlterConfigOpType.SET, "127.0.0.1:1")])
    assert ei.value.args[0].code() == KafkaError.INVALID_CONFIG
    broker.restart()
    a = admin(broker)
    assert describe(a, ResourceType.TOPIC, topic)["retention.ms"].value == "1800000"


def test_legacy_alter_configs_with_kafka_python(make_broker):
    from kafka.admin import ConfigResource as KConfigResource
    from kafka.admin import ConfigResourceType, KafkaAdminClient

    broker = make_broker()
    topic = unique_topic("cfg-kp")
    create_topic(broker.bootstrap, topic)
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        # AlterConfigs replaces the whole override set on the wire (the socket test checks
        # that); kafka-python 3 first reads the current overrides and sends them along, so
        # the ones not named are kept.
        client.alter_configs([KConfigResource(ConfigResourceType.TOPIC, topic,
                                              configs={"segment.ms": "600000",
                                                       "message.timestamp.type": "LogAppendTime"})])
        configs = describe(admin(broker), ResourceType.TOPIC, topic)
        assert configs["segment.ms"].value == "600000"
        assert configs["message.timestamp.type"].value == "LogAppendTime"
        client.alter_configs([KConfigResource(ConfigResourceType.TOPIC, topic,
                                              configs={"segment.ms": "700000"})])
        configs = describe(admin(broker), ResourceType.TOPIC, topic)
        assert configs["segment.ms"].value == "700000"
        assert configs["message.timestamp.type"].value == "LogAppendTime"
    finally:
        client.close()
