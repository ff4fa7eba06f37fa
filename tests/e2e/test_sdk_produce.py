"""`sluice produce` (the Rust SDK producer) read back by other clients: confluent-kafka
and kafka-python see every line exactly once, with its headers, and each key on the
partition confluent-kafka's `murmur2_random` partitioner (= Java's) chooses."""

import json
import subprocess
import time
from collections import Counter

from confluent_kafka import Producer as ConfluentProducer
from kafka import KafkaConsumer, TopicPartition as KafkaTopicPartition

from conftest import confluent_consume_all, create_topic, sluice_bin, unique_topic

PARTITIONS = 4
KEYS = [f"user-{i}" for i in range(25)] + ["21", "foobar", "abc", "", "ключ"]


def sluice_produce(bootstrap, topic, *args, stdin=None):
    return subprocess.run(
        [sluice_bin(), "produce", topic, "-b", bootstrap, *args],
        input=stdin,
        capture_output=True,
        timeout=120,
    )


def confluent_partitions(bootstrap, keys):
    """Where confluent-kafka's murmur2_random partitioner puts each key (measured by
    producing to a scratch topic with the same partition count)."""
    scratch = unique_topic("scratch")
    create_topic(bootstrap, scratch, partitions=PARTITIONS)
    producer = ConfluentProducer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"}
    )
    placed = {}

    def report(key):
        def callback(err, msg):
            assert err is None, err
            placed[key] = msg.partition()

        return callback

    for key in keys:
        producer.produce(scratch, key=key.encode(), value=b"x", on_delivery=report(key))
    assert producer.flush(30) == 0
    return placed


def lines_for(count):
    return [(KEYS[i % len(KEYS)], f"value {i} with spaces: and colons") for i in range(count)]


def check_read_back(bootstrap, topic, lines, expected_partition, headers):
    expected = Counter(lines)
    # confluent-kafka
    messages = confluent_consume_all(bootstrap, topic, list(range(PARTITIONS)), len(lines))
    got = Counter((m.key().decode(), m.value().decode()) for m in messages)
    assert got == expected, "every line exactly once (confluent-kafka)"
    for m in messages:
        key = m.key().decode()
        assert m.partition() == expected_partition[key], key
        assert dict((k, v.decode()) for k, v in (m.headers() or [])) == headers
    # per partition, values in file order
    by_partition = {}
    for m in sorted(messages, key=lambda m: (m.partition(), m.offset())):
        by_partition.setdefault(m.partition(), []).append(int(m.value().decode().split()[1]))
    for values in by_partition.values():
        assert values == sorted(values), "file order kept per partition"

    # kafka-python
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    try:
        tps = [KafkaTopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records = []
        deadline = time.monotonic() + 60
        while len(records) < len(lines) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        got = Counter((r.key.decode(), r.value.decode()) for r in records)
        assert got == expected, "every line exactly once (kafka-python)"
        for r in records:
            assert r.partition == expected_partition[r.key.decode()]
            assert {k: v.decode() for k, v in r.headers} == headers
    finally:
        consumer.close()


def test_produce_a_file_of_keyed_lines(make_broker, tmp_path):
    b = make_broker()
    topic = unique_topic("sdkprod")
    create_topic(b.bootstrap, topic, partitions=PARTITIONS)
    lines = lines_for(3000)
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"{k}|{v}\n" for k, v in lines), encoding="utf-8")
    proc = sluice_produce(
        b.bootstrap, topic, "--file", str(path), "--key-separator", "|",
        "-H", "source=file", "--header", "team=e2e", "-o", "json",
    )
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout)
    assert summary["records"] == len(lines)
    assert summary["failed"] == 0
    expected_partition = confluent_partitions(b.bootstrap, KEYS)
    assert sorted(summary["partitions"]) == sorted(set(expected_partition.values()))
    check_read_back(b.bootstrap, topic, lines, expected_partition,
                    {"source": "file", "team": "e2e"})


def test_produce_from_stdin_with_compression(make_broker):
    b = make_broker()
    topic = unique_topic("sdkstdin")
    create_topic(b.bootstrap, topic, partitions=PARTITIONS)
    lines = lines_for(500)
    stdin = "".join(f"{k}::{v}\n" for k, v in lines).encode()
    proc = sluice_produce(
        b.bootstrap, topic, "--key-separator", "::", "-H", "source=stdin",
        "--compression", "lz4", "--linger-ms", "20", stdin=stdin,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert "produced 500 record(s)" in proc.stderr.decode()
    expected_partition = confluent_partitions(b.bootstrap, KEYS)
    check_read_back(b.bootstrap, topic, lines, expected_partition, {"source": "stdin"})


def test_produce_to_an_unreachable_broker_says_what_to_do(tmp_path):
    from conftest import free_port

    address = f"127.0.0.1:{free_port()}"
    proc = sluice_produce(address, "nowhere", stdin=b"a\n")
    assert proc.returncode == 4, "exit code 4: no broker at the address"
    assert f"cannot reach {address}: is a broker running?" in proc.stderr.decode()
