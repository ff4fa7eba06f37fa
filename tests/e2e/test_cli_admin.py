"""`sluice topic|group|cluster` run as the real binary against a real broker:
table and JSON output, exit codes, and agreement with other Kafka clients
(confluent-kafka's AdminClient, kafka-python's consumer)."""

import json
import subprocess

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition
from kafka.structs import OffsetAndMetadata

from conftest import free_port, sluice_bin, unique_topic

NOT_FOUND = 3
UNREACHABLE = 4


def run(bootstrap, *args):
    return subprocess.run(
        [sluice_bin(), *args, "-b", bootstrap],
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(bootstrap, *args):
    proc = run(bootstrap, *args)
    assert proc.returncode == 0, (args, proc.returncode, proc.stderr)
    return proc.stdout


def as_json(bootstrap, *args):
    return json.loads(ok(bootstrap, *args, "-o", "json"))


def admin_client(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


def confluent_partitions(bootstrap, topic):
    md = admin_client(bootstrap).list_topics(topic, timeout=10)
    return len(md.topics[topic].partitions)


def confluent_configs(bootstrap, topic):
    admin = admin_client(bootstrap)  # kept alive until the futures resolve
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    (config,) = [f.result(timeout=30) for f in futures.values()]
    return {name: entry.value for name, entry in config.items()}


def produce(bootstrap, topic, per_partition):
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for partition, count in per_partition.items():
        for i in range(count):
            producer.produce(topic, value=f"{partition}-{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


def test_topic_create_list_describe_alter_delete(make_broker):
    b = make_broker()
    topic = unique_topic("cli-admin")

    out = ok(b.bootstrap, "topic", "create", topic, "-p", "3", "-r", "1",
             "-c", "retention.ms=3600000", "-c", "max.message.bytes=200000")
    assert f"created topic `{topic}`" in out
    assert "partitions 3" in out

    # Another client sees the same topic: partitions and configs.
    assert confluent_partitions(b.bootstrap, topic) == 3
    configs = confluent_configs(b.bootstrap, topic)
    assert configs["retention.ms"] == "3600000"
    assert configs["max.message.bytes"] == "200000"

    # Creating it again fails (1), unless --if-not-exists.
    again = run(b.bootstrap, "topic", "create", topic, "-p", "3")
    assert again.returncode == 1
    assert again.stderr.startswith("error:")
    assert "--if-not-exists" in again.stderr
    assert as_json(b.bootstrap, "topic", "create", topic, "--if-not-exists") == {
        "name": topic, "created": False}

    listed = as_json(b.bootstrap, "topic", "list")
    (row,) = [t for t in listed if t["name"] == topic]
    assert row["partitions"] == 3
    assert row["internal"] is False
    table = ok(b.bootstrap, "topic", "list").splitlines()
    assert table[0].split() == ["TOPIC", "PARTITIONS", "INTERNAL", "TOPIC-ID"]
    (line,) = [l for l in table if l.split()[0] == topic]
    assert line.split()[1:3] == ["3", "false"]

    produce(b.bootstrap, topic, {0: 5, 1: 2})
    described = as_json(b.bootstrap, "topic", "describe", topic)
    assert described["name"] == topic
    assert described["partition_count"] == 3
    ends = {p["partition"]: p["log_end_offset"] for p in described["partitions"]}
    assert ends == {0: 5, 1: 2, 2: 0}
    for p in described["partitions"]:
        assert p["leader"] == 1
        assert p["replicas"] == [1]
        assert p["isr"] == [1]
        assert p["log_start_offset"] == 0
    assert described["configs"] == {"retention.ms": "3600000", "max.message.bytes": "200000"}
    table = ok(b.bootstrap, "topic", "describe", topic)
    assert "PARTITION  LEADER  REPLICAS  ISR  LOG-START  LOG-END" in table
    assert "retention.ms" in table and "DYNAMIC_TOPIC_CONFIG" in table

    # Alter: more partitions, one config set, one removed; all visible to confluent-kafka.
    ok(b.bootstrap, "topic", "alter", topic, "--partitions", "5",
       "--set", "retention.ms=1000", "--delete", "max.message.bytes")
    described = as_json(b.bootstrap, "topic", "describe", topic)
    assert described["partition_count"] == 5
    assert described["configs"] == {"retention.ms": "1000"}
    assert confluent_partitions(b.bootstrap, topic) == 5
    configs = confluent_configs(b.bootstrap, topic)
    assert configs["retention.ms"] == "1000"
    assert configs["max.message.bytes"] != "200000"

    # Partitions never shrink: the broker's error, exit 1.
    shrink = run(b.bootstrap, "topic", "alter", topic, "--partitions", "2")
    assert shrink.returncode == 1
    assert "INVALID_PARTITIONS" in shrink.stderr

    deleted = as_json(b.bootstrap, "topic", "delete", topic)
    assert deleted == [{"name": topic, "status": "deleted"}]
    assert topic not in [t["name"] for t in as_json(b.bootstrap, "topic", "list")]
    assert topic not in admin_client(b.bootstrap).list_topics(timeout=10).topics
    gone = run(b.bootstrap, "topic", "describe", topic)
    assert gone.returncode == NOT_FOUND
    assert gone.stderr.startswith("error:")
    assert "sluice topic list" in gone.stderr
    assert run(b.bootstrap, "topic", "delete", topic).returncode == NOT_FOUND
    ok(b.bootstrap, "topic", "delete", topic, "--if-exists")


def test_exit_codes(make_broker):
    b = make_broker()
    missing = unique_topic("missing")
    for args in (("topic", "describe", missing),
                 ("topic", "alter", missing, "--set", "retention.ms=1"),
                 ("topic", "delete", missing),
                 ("group", "describe", "no-such-group"),
                 ("group", "delete", "no-such-group")):
        proc = run(b.bootstrap, *args)
        assert proc.returncode == NOT_FOUND, (args, proc.returncode, proc.stderr)
        assert proc.stderr.startswith("error:"), proc.stderr
        assert "does not exist" in proc.stderr

    # Usage errors are clap's: 2.
    assert run(b.bootstrap, "topic", "create").returncode == 2
    assert run(b.bootstrap, "topic", "create", "x", "-c", "novalue").returncode == 2

    # A port nothing listens on: 4, with what to do.
    nowhere = f"127.0.0.1:{free_port()}"
    for args in (("topic", "list"), ("group", "list"), ("cluster", "info")):
        proc = run(nowhere, *args)
        assert proc.returncode == UNREACHABLE, (args, proc.returncode, proc.stderr)
        assert proc.stderr.startswith(f"error: cannot reach {nowhere}")
        assert "sluice serve" in proc.stderr

    # --help documents them.
    help_text = subprocess.run([sluice_bin(), "topic", "--help"], capture_output=True,
                               text=True, timeout=30).stdout
    assert "Exit codes:" in help_text and "4  cannot reach the broker" in help_text


def test_group_describe_lag_after_kafka_python_commit_then_delete(make_broker):
    b = make_broker()
    topic = unique_topic("lag")
    group = unique_topic("g")
    ok(b.bootstrap, "topic", "create", topic, "-p", "2")
    produced = {0: 12, 1: 8}
    produce(b.bootstrap, topic, produced)

    # kafka-python reads part of each partition and commits what it processed.
    wanted = {0: 5, 1: 3}
    consumer = KafkaConsumer(bootstrap_servers=b.bootstrap, group_id=group,
                             enable_auto_commit=False, auto_offset_reset="earliest")
    partitions = [KafkaTopicPartition(topic, p) for p in produced]
    consumer.assign(partitions)
    processed = {0: 0, 1: 0}
    for _ in range(100):
        for tp, records in consumer.poll(timeout_ms=500).items():
            processed[tp.partition] = max(processed[tp.partition], records[-1].offset + 1)
        if all(processed[p] >= wanted[p] for p in wanted):
            break
    assert all(processed[p] >= wanted[p] for p in wanted), processed
    consumer.commit({KafkaTopicPartition(topic, p): OffsetAndMetadata(n, "", -1)
                     for p, n in wanted.items()})
    consumer.close()

    described = as_json(b.bootstrap, "group", "describe", group)
    rows = {r["partition"]: r for r in described["offsets"] if r["topic"] == topic}
    for p in produced:
        assert rows[p]["committed_offset"] == wanted[p]
        assert rows[p]["log_end_offset"] == produced[p]
        assert rows[p]["lag"] == produced[p] - wanted[p]
    assert described["total_lag"] == sum(produced.values()) - sum(wanted.values())
    table = ok(b.bootstrap, "group", "describe", group)
    assert "LAG" in table.splitlines()[1]

    assert group in [g["group"] for g in as_json(b.bootstrap, "group", "list")]
    assert as_json(b.bootstrap, "group", "delete", group) == [
        {"group": group, "status": "deleted"}]
    assert group not in [g["group"] for g in as_json(b.bootstrap, "group", "list")]
    assert run(b.bootstrap, "group", "describe", group).returncode == NOT_FOUND


def test_cluster_info(make_broker):
    b = make_broker()
    ok(b.bootstrap, "topic", "create", unique_topic("a"), "-p", "3")
    ok(b.bootstrap, "topic", "create", unique_topic("b"), "-p", "2")
    info = as_json(b.bootstrap, "cluster", "info")
    assert info["cluster_id"]
    assert [(br["id"], br["host"], br["port"]) for br in info["brokers"]] == [
        (1, "127.0.0.1", b.port)]
    assert info["controller"]["id"] == 1
    assert info["topics"] == 2
    assert info["partitions"] == 5
    cluster_id = admin_client(b.bootstrap).list_topics(timeout=10).cluster_id
    assert info["cluster_id"] == cluster_id
    table = ok(b.bootstrap, "cluster", "info")
    assert f"CLUSTER-ID  {cluster_id}" in table
    assert f"127.0.0.1:{b.port}" in table
