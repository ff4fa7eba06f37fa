"""`sluice group list|describe|reset-offsets` against a broker with a real
confluent-kafka consumer group."""

import json
import subprocess
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import create_topic, sluice_bin, unique_topic


def sluice(bootstrap, *args, check=True):
    proc = subprocess.run(
        [sluice_bin(), "group", "-b", bootstrap, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def describe(bootstrap, group):
    return json.loads(sluice(bootstrap, "describe", group, "-o", "json").stdout)


def test_group_list_describe_lag_and_reset(make_broker):
    b = make_broker(settings={"group.initial.rebalance.delay.ms": "100"})
    topic = unique_topic("cli")
    group = unique_topic("g")
    create_topic(b.bootstrap, topic, partitions=3)
    producer = Producer({"bootstrap.servers": b.bootstrap, "acks": "all"})
    for i in range(30):
        producer.produce(topic, value=f"v{i}".encode(), partition=i % 3)
    assert producer.flush(30) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": b.bootstrap,
            "group.id": group,
            "client.id": "cli-test-consumer",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    # Consume 4 records of each partition and commit after each.
    seen = {0: 0, 1: 0, 2: 0}
    deadline = time.monotonic() + 60
    while sum(min(n, 4) for n in seen.values()) < 12 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        if seen[msg.partition()] < 4:
            seen[msg.partition()] += 1
            consumer.commit(
                offsets=[TopicPartition(topic, msg.partition(), msg.offset() + 1)],
                asynchronous=False,
            )
        else:
            consumer.seek(TopicPartition(topic, msg.partition(), 4))
    assert all(n >= 4 for n in seen.values()), seen

    listed = json.loads(sluice(b.bootstrap, "list", "-o", "json").stdout)
    assert {"group": group, "state": "Stable", "protocol_type": "consumer"} in listed

    described = describe(b.bootstrap, group)
    assert described["state"] == "Stable"
    assert len(described["members"]) == 1
    assert described["members"][0]["client_id"] == "cli-test-consumer"
    owned = {(p["topic"], p["partition"]) for p in described["members"][0]["partitions"]}
    assert owned == {(topic, 0), (topic, 1), (topic, 2)}
    rows = {r["partition"]: r for r in described["offsets"]}
    for p in range(3):
        assert rows[p]["committed_offset"] == 4
        assert rows[p]["log_end_offset"] == 10
        assert rows[p]["lag"] == 6
    assert described["total_lag"] == 18

    # Resetting a group with a live member is refused, with a message saying why.
    refused = sluice(b.bootstrap, "reset-offsets", group, "--topic", topic, "--to-earliest", check=False)
    assert refused.returncode != 0
    assert "active member" in refused.stderr

    consumer.close()
    deadline = time.monotonic() + 30
    while describe(b.bootstrap, group)["state"] != "Empty" and time.monotonic() < deadline:
        time.sleep(0.2)

    dry = sluice(b.bootstrap, "reset-offsets", group, "--topic", topic, "--to-earliest", "--dry-run")
    assert "dry run" in dry.stdout
    assert {r["partition"]: r["committed_offset"] for r in describe(b.bootstrap, group)["offsets"]} == {0: 4, 1: 4, 2: 4}

    sluice(b.bootstrap, "reset-offsets", group, "--topic", topic, "--to-earliest")
    sluice(b.bootstrap, "reset-offsets", group, "--topic", topic, "--partition", "1", "--to-offset", "7")
    offsets = {r["partition"]: r["committed_offset"] for r in describe(b.bootstrap, group)["offsets"]}
    assert offsets == {0: 0, 1: 7, 2: 0}

    # A new consumer of the group starts from the reset offsets.
    consumer = Consumer(
        {
            "bootstrap.servers": b.bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    first = {}
    deadline = time.monotonic() + 60
    while len(first) < 3 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        first.setdefault(msg.partition(), msg.offset())
    consumer.close()
    assert first == {0: 0, 1: 7, 2: 0}

    sluice(b.bootstrap, "reset-offsets", group, "--topic", topic, "--to-latest")
    offsets = {r["partition"]: r["committed_offset"] for r in describe(b.bootstrap, group)["offsets"]}
    assert offsets == {0: 10, 1: 10, 2: 10}

    # `group delete` removes the (now memberless) group and its offsets.
    deleted = json.loads(sluice(b.bootstrap, "delete", group, "-o", "json").stdout)
    assert deleted == [{"group": group, "status": "deleted"}]
    listed = json.loads(sluice(b.bootstrap, "list", "-o", "json").stdout)
    assert group not in [g["group"] for g in listed]
    gone = sluice(b.bootstrap, "describe", group, check=False)
    assert gone.returncode == 3
    assert "does not exist" in gone.stderr


def test_group_delete_refuses_a_group_with_members(make_broker):
    b = make_broker(settings={"group.initial.rebalance.delay.ms": "100"})
    topic = unique_topic("cli")
    group = unique_topic("g")
    create_topic(b.bootstrap, topic, partitions=1)
    consumer = Consumer(
        {
            "bootstrap.servers": b.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        consumer.poll(0.2)
        if consumer.assignment():
            break
    assert consumer.assignment()
    refused = sluice(b.bootstrap, "delete", group, check=False)
    consumer.close()
    assert refused.returncode == 1
    assert refused.stderr.startswith("error:")
    assert "stop its consumers first" in refused.stderr
