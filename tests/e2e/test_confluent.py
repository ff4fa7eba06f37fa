"""confluent-kafka (librdkafka) producer/consumer/admin against Sluice."""

import os
import time

import pytest
from confluent_kafka import (
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
    TIMESTAMP_CREATE_TIME,
)
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from conftest import confluent_consume_all, create_topic, unique_topic, wait_topic_partitions


def make_producer(bootstrap, **conf):
    c = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": False,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 30000,
    }
    c.update(conf)
    return Producer(c)


def produce_all(producer, topic, msgs, partition=None):
    """msgs: list of dicts with value/key/headers/timestamp. Returns list of
    (err, partition, offset) delivery reports in message order."""
    reports = [None] * len(msgs)

    def cb_for(i):
        def cb(err, msg):
            reports[i] = (err, msg.partition(), msg.offset())
        return cb

    for i, m in enumerate(msgs):
        kwargs = {k: v for k, v in m.items() if k in ("value", "key", "headers", "timestamp")}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, on_delivery=cb_for(i), **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} messages not delivered"
    assert all(r is not None for r in reports), "missing delivery reports"
    return reports


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


# ---------------------------------------------------------------------------


def test_byte_exact_round_trip(broker):
    topic = unique_topic("cf")
    create_topic(broker.bootstrap, topic, partitions=2)
    ts_base = int(time.time() * 1000) - 3_600_000  # an hour ago: clearly explicit
    big = os.urandom(100 * 1024)
    msgs = [
        {"key": b"k-bin", "value": bytes(range(256)) * 3},
        {"key": b"k-empty", "value": b""},
        {"key": b"k-none-value", "value": None},
        {"key": None, "value": b"no key here"},
        {"key": None, "value": None},
        {"key": b"k-big", "value": big},
        {"key": b"\x00\xff\x00", "value": b"\x00" * 17,
         "headers": [("h1", b"v1"), ("dup", b"a"), ("dup", b"b"), ("nullh", None), ("bin", b"\x00\xfe")]},
        {"key": "unicode-\u00e9".encode(), "value": "snow \u2603".encode(), "timestamp": ts_base},
        {"key": b"k-ts", "value": b"ts2", "timestamp": ts_base + 1234,
         "headers": [("only", b"")]},
    ]
    for i in range(50):
        msgs.append({"key": f"seq-{i % 5}".encode(), "value": f"v{i}".encode(),
                     "timestamp": ts_base + 10_000 + i})

    p = make_producer(broker.bootstrap)
    reports = produce_all(p, topic, msgs, partition=None)
    for (err, part, off), m in zip(reports, msgs):
        assert err is None, f"delivery failed for {m.get('key')}: {err}"
        assert part in (0, 1)
        assert off >= 0

    # offsets per partition are contiguous and unique
    by_part = {}
    for (_, part, off) in reports:
        by_part.setdefault(part, []).append(off)
    for part, offs in by_part.items():
        assert sorted(offs) == list(range(len(offs))), f"partition {part}: {sorted(offs)}"

    got = confluent_consume_all(broker.bootstrap, topic, [0, 1], len(msgs))
    index = {(m.partition(), m.offset()): m for m in got}
    assert len(index) == len(msgs)
    for (_, part, off), sent in zip(reports, msgs):
        m = index[(part, off)]
        assert m.key() == sent.get("key"), (part, off)
        assert m.value() == sent.get("value"), (part, off, sent.get("key"))
        want_headers = sent.get("headers")
        got_headers = m.headers()
        if want_headers:
            assert got_headers == want_headers
        else:
            assert not got_headers
        if "timestamp" in sent:
            assert m.timestamp() == (TIMESTAMP_CREATE_TIME, sent["timestamp"])
        else:
            tstype, ts = m.timestamp()
            assert tstype == TIMESTAMP_CREATE_TIME
            assert abs(ts - time.time() * 1000) < 600_000

    # seek into the middle of partition: consume from an explicit offset
    part = reports[-1][1]
    n_in_part = len(by_part[part])
    start = n_in_part // 2
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused",
                  "enable.auto.commit": False, "enable.auto.offset.store": False})
    try:
        c.assign([TopicPartition(topic, part, start)])
        offs = []
        deadline = time.monotonic() + 30
        while len(offs) < n_in_part - start and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert not m.error(), m.error()
            offs.append(m.offset())
        assert offs == list(range(start, n_in_part))
        # seek back to 0 on the assigned partition
        c.seek(TopicPartition(topic, part, 0))
        first = None
        while first is None and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                first = m
        assert first is not None and first.offset() == 0
    finally:
        c.close()


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_acks_levels(broker, acks):
    topic = unique_topic(f"acks{acks}")
    create_topic(broker.bootstrap, topic, partitions=1)
    p = make_producer(broker.bootstrap, acks=acks)
    msgs = [{"key": f"k{i}".encode(), "value": f"value-{i}".encode()} for i in range(200)]
    reports = produce_all(p, topic, msgs, partition=0)
    assert all(err is None for err, _, _ in reports)
    if acks != "0":
        assert [off for _, _, off in reports] == list(range(200))
    got = confluent_consume_all(broker.bootstrap, topic, [0], 200, timeout=60)
    assert [m.offset() for m in got] == list(range(200))
    assert [m.value() for m in got] == [m["value"] for m in msgs]


def test_auto_create_on_produce(make_broker):
    b = make_broker(settings={"num.partitions": 3, "auto.create.topics.enable": "true"})
    topic = unique_topic("auto")
    p = make_producer(b.bootstrap)
    reports = produce_all(p, topic, [{"value": b"hello", "key": b"k"}])
    assert reports[0][0] is None, reports
    md = admin(b.bootstrap).list_topics(topic, timeout=10)
    assert topic in md.topics
    assert md.topics[topic].error is None
    assert len(md.topics[topic].partitions) == 3
    got = confluent_consume_all(b.bootstrap, topic, [reports[0][1]], 1)
    assert got[0].value() == b"hello"


def test_auto_create_disabled(make_broker):
    b = make_broker(settings={"auto.create.topics.enable": "false"})
    topic = unique_topic("noauto")
    p = make_producer(b.bootstrap, **{"message.timeout.ms": 3000})
    errs = []
    p.produce(topic, b"x", on_delivery=lambda err, msg: errs.append(err))
    p.flush(20)
    assert errs and errs[0] is not None
    md = admin(b.bootstrap).list_topics(timeout=10)
    assert topic not in md.topics


def test_message_too_large(make_broker):
    b = make_broker(settings={"message.max.bytes": 20000})
    topic = unique_topic("big")
    create_topic(b.bootstrap, topic, partitions=1)
    p = make_producer(b.bootstrap, **{"message.max.bytes": 1_000_000, "linger.ms": 0})
    reports = produce_all(p, topic, [{"value": b"x" * 100}, {"value": os.urandom(50_000)}], partition=0)
    # the small one (sent first, separate batch because linger is 0... or the
    # same batch) - the big one must fail with MSG_SIZE_TOO_LARGE
    err_big = reports[1][0]
    assert err_big is not None, "oversized message was accepted"
    assert err_big.code() == KafkaError.MSG_SIZE_TOO_LARGE, err_big
    # a small message still works afterwards
    r2 = produce_all(p, topic, [{"value": b"after"}], partition=0)
    assert r2[0][0] is None
    b.assert_alive()


def test_list_offsets(broker):
    topic = unique_topic("lo")
    create_topic(broker.bootstrap, topic, partitions=1)
    t0 = int(time.time() * 1000) - 100_000
    msgs = [{"value": f"m{i}".encode(), "timestamp": t0 + i * 1000} for i in range(10)]
    p = make_producer(broker.bootstrap, **{"linger.ms": 0, "batch.num.messages": 1})
    # produce one by one so that the messages land in separate batches
    for m in msgs:
        produce_all(p, topic, [m], partition=0)
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused",
                  "enable.auto.commit": False})
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert (low, high) == (0, 10)
        cases = {
            t0 - 5000: 0,          # before everything -> first offset
            t0: 0,                 # exact
            t0 + 1: 1,             # between -> first at or after
            t0 + 4500: 5,
            t0 + 9000: 9,          # last
        }
        for ts, want in cases.items():
            res = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)
            assert res[0].error is None, res[0].error
            assert res[0].offset == want, f"ts {ts - t0}: got {res[0].offset}, want {want}"
        res = c.offsets_for_times([TopicPartition(topic, 0, t0 + 60_000)], timeout=10)
        assert res[0].offset == -1  # after the last timestamp: no offset
    finally:
        c.close()

    # AdminClient.list_offsets (earliest / latest / max timestamp) if present
    a = admin(broker.bootstrap)
    if hasattr(a, "list_offsets"):
        from confluent_kafka.admin import OffsetSpec
        tp = TopicPartition(topic, 0)
        for spec, want in ((OffsetSpec.earliest(), 0), (OffsetSpec.latest(), 10),
                           (OffsetSpec.for_timestamp(t0 + 2500), 3),
                           (OffsetSpec.max_timestamp(), 9)):
            res = a.list_offsets({tp: spec}, request_timeout=10)
            info = res[tp].result(timeout=15)
            assert info.offset == want, (spec, info.offset, want)

        # max timestamp in the middle of the log (timestamps not monotonic)
        topic2 = unique_topic("lomax")
        create_topic(broker.bootstrap, topic2, partitions=1)
        for i, ts in enumerate([t0, t0 + 50_000, t0 + 10, t0 + 20]):
            produce_all(p, topic2, [{"value": f"x{i}".encode(), "timestamp": ts}], partition=0)
        tp2 = TopicPartition(topic2, 0)
        info = a.list_offsets({tp2: OffsetSpec.max_timestamp()}, request_timeout=10)[tp2].result(timeout=15)
        assert info.offset == 1
        assert info.timestamp == t0 + 50_000
        # by timestamp: first offset whose timestamp is >= target
        info = a.list_offsets({tp2: OffsetSpec.for_timestamp(t0 + 15)}, request_timeout=10)[tp2].result(timeout=15)
        assert info.offset == 1


def test_unknown_topic_watermarks(make_broker):
    b = make_broker(settings={"auto.create.topics.enable": "false"})
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "unused",
                  "enable.auto.commit": False})
    try:
        with pytest.raises(KafkaException) as ei:
            c.get_watermark_offsets(TopicPartition("does-not-exist", 0), timeout=10)
        assert ei.value.args[0].code() in (KafkaError.UNKNOWN_TOPIC_OR_PART,
                                           KafkaError._UNKNOWN_PARTITION,
                                           KafkaError._UNKNOWN_TOPIC), ei.value
    finally:
        c.close()


def test_admin_topics(broker):
    a = admin(broker.bootstrap)
    name = unique_topic("adm")

    # validate_only does not create
    fs = a.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)], validate_only=True)
    fs[name].result(timeout=15)
    assert name not in a.list_topics(timeout=10).topics

    fs = a.create_topics([NewTopic(name, num_partitions=2, replication_factor=1,
                                   config={"max.message.bytes": "500000"})])
    fs[name].result(timeout=15)
    wait_topic_partitions(broker.bootstrap, name, 2)
    md = a.list_topics(timeout=10)
    assert name in md.topics and len(md.topics[name].partitions) == 2
    assert md.orig_broker_id == 1 or len(md.brokers) == 1

    # duplicate
    fs = a.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])
    with pytest.raises(KafkaException) as ei:
        fs[name].result(timeout=15)
    assert ei.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS

    # invalid names
    for bad in ("bad name!", "a" * 300, ".."):
        fs = a.create_topics([NewTopic(bad, num_partitions=1, replication_factor=1)])
        with pytest.raises(KafkaException) as ei:
            fs[bad].result(timeout=15)
        assert ei.value.args[0].code() == KafkaError.TOPIC_EXCEPTION, (bad, ei.value)

    # invalid partition count
    bad_parts = unique_topic("zero")
    fs = a.create_topics([NewTopic(bad_parts, num_partitions=0, replication_factor=1)])
    with pytest.raises(KafkaException) as ei:
        fs[bad_parts].result(timeout=15)
    assert ei.value.args[0].code() == KafkaError.INVALID_PARTITIONS

    # create_partitions 2 -> 5
    fs = a.create_partitions([NewPartitions(name, 5)])
    fs[name].result(timeout=15)
    wait_topic_partitions(broker.bootstrap, name, 5)
    # shrinking is refused
    fs = a.create_partitions([NewPartitions(name, 3)])
    with pytest.raises(KafkaException) as ei:
        fs[name].result(timeout=15)
    assert ei.value.args[0].code() == KafkaError.INVALID_PARTITIONS

    # produce to the new partition 4
    p = make_producer(broker.bootstrap)
    rep = produce_all(p, name, [{"value": b"p4"}], partition=4)
    assert rep[0][0] is None and rep[0][1] == 4 and rep[0][2] == 0

    # describe_configs: topic
    from confluent_kafka.admin import ResourceType
    res = ConfigResource(ResourceType.TOPIC, name)
    fs = a.describe_configs([res])
    configs = list(fs.values())[0].result(timeout=15)
    assert "max.message.bytes" in configs
    assert configs["max.message.bytes"].value == "500000"
    assert "segment.bytes" in configs
    assert "cleanup.policy" in configs

    # describe_configs: unknown topic
    fs = a.describe_configs([ConfigResource(ResourceType.TOPIC, "no-such-topic-cfg")])
    with pytest.raises(KafkaException) as ei:
        list(fs.values())[0].result(timeout=15)
    assert ei.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART

    # describe_configs: broker
    res = ConfigResource(ResourceType.BROKER, "1")
    configs = list(a.describe_configs([res]).values())[0].result(timeout=15)
    assert configs["num.partitions"].value == "3"

    # delete
    fs = a.delete_topics([name], operation_timeout=15)
    fs[name].result(timeout=15)
    deadline = time.monotonic() + 15
    while name in a.list_topics(timeout=10).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    assert name not in a.list_topics(timeout=10).topics
    # deleting again -> unknown topic
    fs = a.delete_topics([name], operation_timeout=15)
    with pytest.raises(KafkaException) as ei:
        fs[name].result(timeout=15)
    assert ei.value.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_describe_cluster(broker):
    a = admin(broker.bootstrap)
    if not hasattr(a, "describe_cluster"):
        pytest.skip("describe_cluster not in this confluent-kafka")
    desc = a.describe_cluster(request_timeout=15).result(timeout=20)
    assert len(desc.nodes) == 1
    node = desc.nodes[0]
    assert node.id == 1
    assert node.port == broker.port
    assert node.host in ("127.0.0.1", "localhost")
    assert desc.controller is not None and desc.controller.id == 1
    assert desc.cluster_id


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches(broker, codec):
    """Batches are stored as the client compressed them and come back intact."""
    topic = unique_topic(f"comp-{codec}")
    create_topic(broker.bootstrap, topic, partitions=1)
    p = make_producer(broker.bootstrap, **{"compression.type": codec, "linger.ms": 50})
    msgs = [{"key": f"k{i}".encode(), "value": (f"compressible-{i}-" * 20).encode(),
             "headers": [("i", str(i).encode())]} for i in range(300)]
    msgs.append({"key": b"rand", "value": os.urandom(5000)})
    reports = produce_all(p, topic, msgs, partition=0)
    assert all(err is None for err, _, _ in reports), [r for r in reports if r[0]][:3]
    assert [off for _, _, off in reports] == list(range(len(msgs)))
    got = confluent_consume_all(broker.bootstrap, topic, [0], len(msgs))
    assert [m.offset() for m in got] == list(range(len(msgs)))
    for m, sent in zip(got, msgs):
        assert m.key() == sent["key"] and m.value() == sent["value"]
        assert (m.headers() or []) == sent.get("headers", [])
    # a consumer starting in the middle of a compressed batch gets the right records
    mid = confluent_consume_all(broker.bootstrap, topic, [0], len(msgs) - 150, start_offset=150)
    assert [m.offset() for m in mid] == list(range(150, len(msgs)))


def test_concurrent_producers_one_partition(broker):
    """Several producers appending to one partition with acks=all: every
    acknowledged offset is unique, and the log holds exactly what was sent."""
    import threading

    topic = unique_topic("conc")
    create_topic(broker.bootstrap, topic, partitions=1)
    results = {}

    def worker(w):
        p = make_producer(broker.bootstrap, **{"linger.ms": 1})
        msgs = [{"value": f"w{w}-{i}".encode()} for i in range(500)]
        results[w] = (msgs, produce_all(p, topic, msgs, partition=0))

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert len(results) == 4
    by_offset = {}
    for w, (msgs, reports) in results.items():
        offs = [off for _, _, off in reports]
        assert all(err is None for err, _, _ in reports)
        assert offs == sorted(offs), f"producer {w}: offsets not increasing"
        for m, off in zip(msgs, offs):
            assert off not in by_offset, f"offset {off} acknowledged twice"
            by_offset[off] = m["value"]
    assert sorted(by_offset) == list(range(2000))
    got = confluent_consume_all(broker.bootstrap, topic, [0], 2000)
    assert {m.offset(): m.value() for m in got} == by_offset
