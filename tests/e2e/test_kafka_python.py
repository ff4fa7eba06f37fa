"""kafka-python producer/consumer/admin against Sluice."""

import os
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, KafkaAdminClient, NewTopic
import kafka.errors as Errors

from conftest import unique_topic, wait_topic_partitions


def producer(bootstrap, **kw):
    conf = dict(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                linger_ms=5, request_timeout_ms=30000)
    conf.update(kw)
    return KafkaProducer(**conf)


def consumer(bootstrap, **kw):
    conf = dict(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                auto_offset_reset="earliest", consumer_timeout_ms=1000,
                fetch_max_wait_ms=200)
    conf.update(kw)
    return KafkaConsumer(**conf)


def poll_n(c, n, timeout=30):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for tp, recs in c.poll(timeout_ms=500).items():
            out.extend(recs)
    return out


def admin(bootstrap):
    return KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)


def create(bootstrap, name, partitions):
    a = admin(bootstrap)
    try:
        a.create_topics({name: {"num_partitions": partitions, "replication_factor": 1}})
    finally:
        a.close()
    wait_topic_partitions(bootstrap, name, partitions)


def test_round_trip_byte_exact(broker):
    topic = unique_topic("kp")
    create(broker.bootstrap, topic, 3)
    ts0 = int(time.time() * 1000) - 7_200_000
    msgs = []
    for i in range(60):
        msgs.append(dict(
            key=None if i % 10 == 3 else f"key-{i % 7}".encode(),
            value=(os.urandom(i * 37) if i % 4 == 0 else f"value-{i}".encode()) if i != 5 else b"",
            headers=[("idx", str(i).encode()), ("dup", b"1"), ("dup", b"2")] if i % 2 else [],
            timestamp_ms=ts0 + i,
            partition=i % 3,
        ))
    msgs.append(dict(key=b"big", value=os.urandom(100 * 1024), headers=[], timestamp_ms=ts0 + 999,
                     partition=0))
    p = producer(broker.bootstrap)
    futures = [p.send(topic, **m) for m in msgs]
    p.flush(60)
    metas = [f.get(timeout=60) for f in futures]
    p.close()
    for md, m in zip(metas, msgs):
        assert md.topic == topic
        assert md.partition == m["partition"]
        assert md.offset >= 0
    per_part = {}
    for md in metas:
        per_part.setdefault(md.partition, []).append(md.offset)
    for part, offs in per_part.items():
        assert offs == list(range(len(offs))), f"partition {part}: {offs}"

    c = consumer(broker.bootstrap)
    try:
        tps = [TopicPartition(topic, i) for i in range(3)]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, 0)
        recs = poll_n(c, len(msgs))
        assert len(recs) == len(msgs)
        idx = {(r.partition, r.offset): r for r in recs}
        for md, m in zip(metas, msgs):
            r = idx[(md.partition, md.offset)]
            assert r.key == m["key"]
            assert r.value == m["value"]
            assert [(k, v) for k, v in r.headers] == m["headers"]
            assert r.timestamp == m["timestamp_ms"]
            assert r.timestamp_type == 0  # CreateTime
        # nothing more
        assert poll_n(c, 1, timeout=1) == []

        # seek_to_beginning / seek_to_end / seek
        tp0 = tps[0]
        n0 = len(per_part[0])
        c.seek_to_end(tp0)
        assert c.position(tp0) == n0
        c.seek_to_beginning(tp0)
        assert c.position(tp0) == 0
        c.seek(tp0, n0 - 2)
        c.pause(tps[1], tps[2])
        got = poll_n(c, 2)
        assert [(r.partition, r.offset) for r in got] == [(0, n0 - 2), (0, n0 - 1)]

        assert c.beginning_offsets(tps) == {tp: 0 for tp in tps}
        assert c.end_offsets(tps) == {tp: len(per_part[tp.partition]) for tp in tps}

        # partition 1 holds i = 1, 4, 7, ... with timestamps ts0 + i
        tp1 = tps[1]
        res = c.offsets_for_times({tp1: ts0 + 2})  # first at or after -> i=4 -> offset 1
        assert res[tp1].offset == 1
        assert res[tp1].timestamp == ts0 + 4
        res = c.offsets_for_times({tp1: ts0 - 1000})
        assert res[tp1].offset == 0
        res = c.offsets_for_times({tp1: ts0 + 1_000_000})
        assert res[tp1] is None
    finally:
        c.close()


def test_out_of_range_resets(broker):
    topic = unique_topic("oor")
    create(broker.bootstrap, topic, 1)
    p = producer(broker.bootstrap)
    for i in range(5):
        p.send(topic, value=f"v{i}".encode(), partition=0).get(timeout=30)
    p.close()
    tp = TopicPartition(topic, 0)

    c = consumer(broker.bootstrap, auto_offset_reset="earliest")
    try:
        c.assign([tp])
        c.seek(tp, 1000)
        recs = poll_n(c, 5)
        assert [r.offset for r in recs] == [0, 1, 2, 3, 4]
        assert [r.value for r in recs] == [f"v{i}".encode() for i in range(5)]
    finally:
        c.close()

    c = consumer(broker.bootstrap, auto_offset_reset="latest")
    try:
        c.assign([tp])
        c.seek(tp, 1000)
        assert poll_n(c, 1, timeout=3) == []
        assert c.position(tp) == 5
    finally:
        c.close()


def test_admin(broker):
    a = admin(broker.bootstrap)
    name = unique_topic("kpadm")
    try:
        a.create_topics({name: {"num_partitions": 2, "replication_factor": 1,
                                "configs": {"max.message.bytes": "600000"}}})
        wait_topic_partitions(broker.bootstrap, name, 2)
        assert name in a.list_topics()

        with pytest.raises(Errors.TopicAlreadyExistsError):
            a.create_topics({name: {"num_partitions": 1, "replication_factor": 1}})

        a.create_partitions({name: 4})
        wait_topic_partitions(broker.bootstrap, name, 4)

        cfg = a.describe_configs([ConfigResource("TOPIC", name)], config_filter="all")
        topic_cfg = cfg["topic"][name]
        assert topic_cfg["max.message.bytes"]["value"] == "600000"

        cfg = a.describe_configs([ConfigResource("BROKER", "1")], config_filter="all")
        broker_cfg = cfg["broker"]["1"]
        assert broker_cfg["num.partitions"]["value"] == "3"

        a.delete_topics([name])
        deadline = time.monotonic() + 15
        while name in a.list_topics() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert name not in a.list_topics()
        with pytest.raises(Errors.UnknownTopicOrPartitionError):
            a.delete_topics([name])
    finally:
        a.close()


def test_metadata_auto_create(broker):
    topic = unique_topic("kpauto")
    p = producer(broker.bootstrap)
    md = p.send(topic, key=b"k", value=b"v").get(timeout=30)
    p.close()
    assert md.offset == 0
    c = consumer(broker.bootstrap)
    try:
        parts = c.partitions_for_topic(topic)
        assert parts == {0, 1, 2}
        tp = TopicPartition(topic, md.partition)
        c.assign([tp])
        c.seek(tp, 0)
        recs = poll_n(c, 1)
        assert [(r.key, r.value) for r in recs] == [(b"k", b"v")]
    finally:
        c.close()


def test_gzip_round_trip(broker):
    topic = unique_topic("kpgz")
    create(broker.bootstrap, topic, 1)
    p = producer(broker.bootstrap, compression_type="gzip", linger_ms=50)
    futs = [p.send(topic, key=f"k{i}".encode(), value=(f"gz-{i}-" * 30).encode(), partition=0)
            for i in range(200)]
    p.flush(30)
    assert [f.get(timeout=30).offset for f in futs] == list(range(200))
    p.close()
    c = consumer(broker.bootstrap)
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 57)  # in the middle of a compressed batch
        recs = poll_n(c, 200 - 57)
        assert [r.offset for r in recs] == list(range(57, 200))
        assert [r.value for r in recs] == [(f"gz-{i}-" * 30).encode() for i in range(57, 200)]
    finally:
        c.close()
