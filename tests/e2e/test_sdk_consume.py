"""`sluice consume` (the SDK consumer) interoperating with confluent-kafka and kafka-python:
reading what they produce, committing where they resume, sharing a group with them."""

import json
import subprocess
import time

from confluent_kafka import Consumer, Producer
from kafka import KafkaConsumer

from conftest import create_topic, sluice_bin, unique_topic


def consume(bootstrap, *args, timeout=60):
    proc = subprocess.run(
        [sluice_bin(), "consume", "-b", bootstrap, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def produce(bootstrap, topic, records):
    """records: (partition, key, value, headers) tuples, produced in order."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for partition, key, value, headers in records:
        producer.produce(topic, key=key, value=value, partition=partition, headers=headers)
    assert producer.flush(30) == 0


def test_records_from_confluent_kafka_are_read_exactly_as_json(make_broker):
    b = make_broker()
    topic = unique_topic("sdkc")
    create_topic(b.bootstrap, topic, partitions=2)
    records = [
        (i % 2, f"key-{i}".encode(), f"value-{i}".encode(), [("trace", f"t{i}".encode())])
        for i in range(20)
    ]
    records.append((0, None, b"\xff\x00binary", [("bin", b"\x80")]))
    produce(b.bootstrap, topic, records)

    out = consume(b.bootstrap, topic, "--from-beginning", "-f", "json", "-n", "21").stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 21
    by_value = {line["value"]: line for line in lines}
    for i in range(20):
        line = by_value[f"value-{i}"]
        assert line["topic"] == topic
        assert line["partition"] == i % 2
        assert line["key"] == f"key-{i}"
        assert line["headers"] == [{"key": "trace", "value": f"t{i}"}]
        assert line["timestamp_ms"] > 0
    binary = [line for line in lines if line.get("value_encoding") == "base64"]
    assert len(binary) == 1
    assert binary[0]["value"] == "/wBiaW5hcnk="
    assert binary[0]["key"] is None
    assert binary[0]["headers"] == [{"key": "bin", "value": "gA==", "value_encoding": "base64"}]
    # Per partition, offsets are consecutive from 0.
    for partition in (0, 1):
        offsets = [line["offset"] for line in lines if line["partition"] == partition]
        assert offsets == list(range(len(offsets)))

    # --partition/--offset reads from exactly there; plain output with the prefixes.
    out = consume(
        b.bootstrap, topic, "--partition", "1", "--offset", "8", "--timeout-ms", "1500",
        "--print-partition", "--print-offset", "--print-key", "--print-headers",
    ).stdout
    assert out.splitlines() == [
        f"Partition:1\tOffset:{o}\tkey-{2 * o + 1}\ttrace:t{2 * o + 1}\tvalue-{2 * o + 1}"
        for o in range(8, 10)
    ]


def test_group_commit_is_where_kafka_python_resumes(make_broker):
    b = make_broker(settings={"group.initial.rebalance.delay.ms": "0"})
    topic = unique_topic("sdkg")
    group = unique_topic("g")
    create_topic(b.bootstrap, topic, partitions=1)
    produce(b.bootstrap, topic, [(0, None, f"v{i}".encode(), []) for i in range(10)])

    out = consume(b.bootstrap, topic, "-g", group, "--from-beginning", "-n", "6").stdout
    assert out.splitlines() == [f"v{i}" for i in range(6)]

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=b.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10000,
    )
    try:
        values = []
        for message in consumer:
            values.append(message.value.decode())
            if len(values) == 4:
                break
        assert values == [f"v{i}" for i in range(6, 10)]
    finally:
        consumer.close()


def test_a_group_of_confluent_kafka_and_sluice_consume_splits_partitions(make_broker):
    b = make_broker(settings={"group.initial.rebalance.delay.ms": "0"})
    topic = unique_topic("sdks")
    group = unique_topic("g")
    create_topic(b.bootstrap, topic, partitions=4)

    other = Consumer(
        {
            "bootstrap.servers": b.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    other.subscribe([topic])
    sluice_proc = subprocess.Popen(
        [sluice_bin(), "consume", "-b", b.bootstrap, topic, "-g", group, "--from-beginning",
         "-f", "json", "--timeout-ms", "12000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Both members join (range is the protocol they share), then records arrive.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not 0 < len(other.assignment()) < 4:
            other.poll(0.2)
        mine = {tp.partition for tp in other.assignment()}
        assert 0 < len(mine) < 4, f"confluent-kafka took {mine}: the sluice member got nothing"

        produce(b.bootstrap, topic, [(i % 4, None, f"v{i}".encode(), []) for i in range(40)])
        theirs_values = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(theirs_values) < 10 * len(mine):
            msg = other.poll(0.5)
            if msg is None or msg.error():
                continue
            theirs_values.append((msg.partition(), msg.value().decode()))
            other.commit(message=msg, asynchronous=False)
        out, err = sluice_proc.communicate(timeout=60)
        assert sluice_proc.returncode == 0, err
        sluice_lines = [json.loads(line) for line in out.splitlines()]
        sluice_partitions = {line["partition"] for line in sluice_lines}
        assert sluice_partitions == set(range(4)) - mine
        assert {p for p, _ in theirs_values} == mine
        together = sorted(v for _, v in theirs_values) + sorted(line["value"] for line in sluice_lines)
        assert sorted(together) == sorted(f"v{i}" for i in range(40))
    finally:
        if sluice_proc.poll() is None:
            sluice_proc.kill()
        other.close()
