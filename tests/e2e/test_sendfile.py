"""Fetch with sendfile (default) and with the pread fallback (socket.sendfile.enable=false):
real clients read byte-exact records either way, across several fetches and partitions,
compressed and not."""

import hashlib
import os
import time

import pytest
from confluent_kafka import Producer
from kafka import KafkaConsumer, TopicPartition

from conftest import confluent_consume_all, create_topic, unique_topic

PARTITIONS = 3
COUNT = 3000


def produce(bootstrap, topic, compression):
    """COUNT records of 1 KiB (random, so compression cannot hide a wrong byte) spread
    over the partitions. Returns {(partition, index): (key, value)}."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "enable.idempotence": False, "compression.type": compression,
                  "message.timeout.ms": 30000})
    sent = {}
    errors = []
    for i in range(COUNT):
        key = f"k{i}".encode()
        value = os.urandom(512) + bytes(512)
        partition = i % PARTITIONS
        sent[(partition, i // PARTITIONS)] = (key, value)

        def report(err, msg):
            if err is not None:
                errors.append(err)
        while True:
            try:
                p.produce(topic, value=value, key=key, partition=partition, on_delivery=report)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    assert p.flush(60) == 0
    assert errors == []
    return sent


def digest(records):
    return hashlib.sha256(b"".join(k + v for k, v in records)).hexdigest()


@pytest.mark.parametrize("sendfile", ["true", "false"])
@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_clients_read_byte_exact_records(make_broker, sendfile, compression):
    broker = make_broker(settings={"socket.sendfile.enable": sendfile})
    topic = unique_topic(f"sf-{sendfile}-{compression}")
    create_topic(broker.bootstrap, topic, PARTITIONS)
    sent = produce(broker.bootstrap, topic, compression)

    # librdkafka: small fetches, so the log is read in many responses.
    got = confluent_consume_all(broker.bootstrap, topic, list(range(PARTITIONS)), COUNT,
                                extra_conf={"fetch.max.bytes": 65536, "message.max.bytes": 65536,
                                            "max.partition.fetch.bytes": 32768})
    by_partition = {p: [] for p in range(PARTITIONS)}
    for m in got:
        by_partition[m.partition()].append((m.offset(), m.key(), m.value()))
    for p, records in by_partition.items():
        records.sort()
        assert [r[0] for r in records] == list(range(len(records)))
        expected = [sent[(p, i)] for i in range(len(records))]
        assert digest([(k, v) for _, k, v in records]) == digest(expected)

    # kafka-python: one big fetch per partition.
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                      enable_auto_commit=False, auto_offset_reset="earliest",
                      fetch_max_bytes=50 * 1024 * 1024,
                      max_partition_fetch_bytes=16 * 1024 * 1024, consumer_timeout_ms=1000)
    try:
        c.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        received = {p: [] for p in range(PARTITIONS)}
        deadline = time.monotonic() + 60
        while sum(len(r) for r in received.values()) < COUNT and time.monotonic() < deadline:
            for tp, recs in c.poll(timeout_ms=500).items():
                received[tp.partition].extend((r.offset, r.key, r.value) for r in recs)
    finally:
        c.close()
    for p, records in received.items():
        assert [r[0] for r in records] == list(range(COUNT // PARTITIONS))
        expected = [sent[(p, i)] for i in range(len(records))]
        assert digest([(k, v) for _, k, v in records]) == digest(expected)
    broker.assert_alive()
