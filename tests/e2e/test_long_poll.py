"""Long polling: a waiting fetch is woken by an append, well before max_wait."""

import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition

import kafka_wire as kw
from conftest import create_topic, unique_topic

MAX_WAIT_MS = 5000


def produce_later(bootstrap, topic, delay, value, box):
    def run_timed():
        time.sleep(delay)
        box["sent_at"] = time.monotonic()
        p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False, "acks": "all",
                      "linger.ms": 0})
        p.produce(topic, value=value, partition=0)
        assert p.flush(30) == 0
        box["acked_at"] = time.monotonic()

    t = threading.Thread(target=run_timed, daemon=True)
    t.start()
    return t


def check_woken(box, received):
    # The consumer parked its fetch (max wait 5 s) right after start-up and
    # the record is produced ~1 s later, so a fetch that merely waited out
    # max_wait would deliver it >= ~3 s after the ack. A woken fetch
    # delivers it at once; 2.5 s leaves ample slack for a slow CI machine.
    assert received - box["sent_at"] < 4.5, "record not delivered well before max_wait"
    after_ack = received - box["acked_at"]
    print(f"long-poll: {received - box['sent_at']:.3f}s after produce start, {after_ack:.3f}s after ack")
    assert after_ack < 2.5, f"record arrived {after_ack:.2f}s after its ack: fetch was not woken"


def test_confluent_consumer_woken(broker):
    topic = unique_topic("lp")
    create_topic(broker.bootstrap, topic, partitions=1)
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused",
                  "enable.auto.commit": False, "enable.auto.offset.store": False,
                  "fetch.wait.max.ms": MAX_WAIT_MS, "fetch.min.bytes": 1,
                  "enable.partition.eof": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        # let the consumer connect and park a fetch on the empty partition
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert c.poll(0.1) is None
        box = {}
        t = produce_later(broker.bootstrap, topic, 1.0, b"wake-up", box)
        m = None
        deadline = time.monotonic() + 30
        while m is None and time.monotonic() < deadline:
            m = c.poll(0.05)
        received = time.monotonic()
        t.join(30)
        assert m is not None and not m.error(), m and m.error()
        assert m.value() == b"wake-up"
        check_woken(box, received)
    finally:
        c.close()


def test_kafka_python_consumer_woken(broker):
    topic = unique_topic("lpk")
    create_topic(broker.bootstrap, topic, partitions=1)
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, enable_auto_commit=False,
                      fetch_max_wait_ms=MAX_WAIT_MS, fetch_min_bytes=1,
                      request_timeout_ms=30000)
    try:
        tp = KTopicPartition(topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        assert c.poll(timeout_ms=200) == {}
        box = {}
        t = produce_later(broker.bootstrap, topic, 1.0, b"wake-kp", box)
        got = []
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=50).values():
                got.extend(recs)
        received = time.monotonic()
        t.join(30)
        assert [r.value for r in got] == [b"wake-kp"]
        check_woken(box, received)
    finally:
        c.close()


def test_raw_fetch_waits_max_wait(broker):
    topic = unique_topic("lpraw")
    create_topic(broker.bootstrap, topic, partitions=1)
    with broker.conn(timeout=30) as conn:
        start = time.monotonic()
        p = kw.fetch_v4(conn, topic, 0, 0, max_wait_ms=3000, min_bytes=1)
        elapsed = time.monotonic() - start
    assert p["error_code"] == 0
    assert p["decoded"] == []
    assert p["high_watermark"] == 0
    assert elapsed >= 2.5, f"empty fetch returned after {elapsed:.2f}s, before max_wait_ms"


def test_raw_fetch_returns_early(broker):
    topic = unique_topic("lpraw2")
    create_topic(broker.bootstrap, topic, partitions=1)
    box = {}
    with broker.conn(timeout=30) as conn:
        t = produce_later(broker.bootstrap, topic, 1.0, b"early", box)
        p = kw.fetch_v4(conn, topic, 0, 0, max_wait_ms=10000, min_bytes=1)
        done = time.monotonic()
    t.join(30)
    assert p["error_code"] == 0
    assert [r["value"] for r in p["decoded"]] == [b"early"]
    elapsed = done - box["sent_at"]
    assert elapsed < 8.0, f"fetch answered {elapsed:.2f}s after the produce (max_wait 10 s)"


def test_raw_fetch_min_bytes_and_max_bytes(broker):
    """min_bytes larger than what arrives keeps waiting until max_wait; a
    partition_max_bytes smaller than one batch still returns that batch."""
    topic = unique_topic("lpraw3")
    create_topic(broker.bootstrap, topic, partitions=1)
    with broker.conn(timeout=30) as conn:
        batch = kw.encode_batch([(b"k", b"v" * 500)])
        r = kw.produce_v3(conn, topic, 0, batch)
        assert r["error_code"] == 0 and r["base_offset"] == 0
        # at least one whole batch even if partition_max_bytes is tiny (KIP-74)
        p = kw.fetch_v4(conn, topic, 0, 0, max_wait_ms=100, partition_max_bytes=10)
        assert p["error_code"] == 0
        assert [x["value"] for x in p["decoded"]] == [b"v" * 500]
        # min_bytes far above what is available: waits out max_wait, then
        # returns what it has
        start = time.monotonic()
        p = kw.fetch_v4(conn, topic, 0, 0, max_wait_ms=1500, min_bytes=10_000_000)
        elapsed = time.monotonic() - start
        assert elapsed >= 1.0
        assert [x["value"] for x in p["decoded"]] == [b"v" * 500]


def test_raw_fetch_partition_max_bytes_limits(broker):
    """Several batches: partition_max_bytes / max_bytes bound the response,
    but the first batch is always returned whole."""
    topic = unique_topic("lpraw4")
    create_topic(broker.bootstrap, topic, partitions=1)
    with broker.conn(timeout=30) as conn:
        sizes = []
        for i in range(4):
            batch = kw.encode_batch([(b"k", bytes([65 + i]) * 600)])
            sizes.append(len(batch))
            assert kw.produce_v3(conn, topic, 0, batch)["error_code"] == 0
        for kwargs in ({"partition_max_bytes": 1000}, {"max_bytes": 1000}):
            p = kw.fetch_v4(conn, topic, 0, 0, max_wait_ms=100, **kwargs)
            assert p["error_code"] == 0
            assert p["decoded"] and p["decoded"][0]["offset"] == 0
            assert p["decoded"][0]["value"] == b"A" * 600
            assert len(p["records"]) <= max(1000, sizes[0]), (kwargs, len(p["records"]))
            assert len(p["decoded"]) < 4
        p = kw.fetch_v4(conn, topic, 0, 0, max_wait_ms=100)
        assert [x["value"][0] for x in p["decoded"]] == [65, 66, 67, 68]
