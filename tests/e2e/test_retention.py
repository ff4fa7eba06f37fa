"""Retention by time and size, the log start offset, DeleteRecords: real `sluice` binary,
real clients (confluent-kafka, kafka-python).

Topics use a small `segment.bytes` and the broker checks retention every 100 ms, so
segments are deleted while clients are producing and consuming.
"""

import signal
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from conftest import create_topic, unique_topic

BROKER_SETTINGS = {"log.retention.check.interval.ms": 100, "num.partitions": 1}
SEGMENT_BYTES = 1024


@pytest.fixture
def rbroker(make_broker):
    return make_broker(settings=BROKER_SETTINGS)


def producer(bootstrap):
    # Small batches, so that every segment holds several and size retention has a choice.
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                     "enable.idempotence": False, "batch.num.messages": 5})


def produce(bootstrap, topic, values, timestamp_ms=None):
    p = producer(bootstrap)
    errors = []
    for v in values:
        kwargs = {"timestamp": timestamp_ms} if timestamp_ms is not None else {}
        p.produce(topic, value=v, partition=0,
                  on_delivery=lambda err, msg: err and errors.append(err), **kwargs)
        p.poll(0)
    assert p.flush(30) == 0
    assert not errors, errors[:3]


def watermarks(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
    finally:
        c.close()


def segment_files(broker, topic):
    return sorted(p.name for p in (broker.data_dir / f"{topic}-0").glob("*.log"))


def wait_for(predicate, timeout=20, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def values(prefix, n, size=100):
    return [f"{prefix}-{i:06d}-".encode().ljust(size, b"x") for i in range(n)]


def test_time_retention_deletes_old_segments_and_their_files(rbroker):
    topic = unique_topic("ret-time")
    create_topic(rbroker.bootstrap, topic,
                 config={"segment.bytes": str(SEGMENT_BYTES), "retention.ms": "3600000"})
    old_ms = int(time.time() * 1000) - 2 * 3600 * 1000
    produce(rbroker.bootstrap, topic, values("old", 100), timestamp_ms=old_ms)
    produce(rbroker.bootstrap, topic, values("new", 100))
    # Everything old goes except what shares a segment with new records.
    wait_for(lambda: watermarks(rbroker.bootstrap, topic)[0] >= 80,
             what="retention to move the low watermark")
    low, high = watermarks(rbroker.bootstrap, topic)
    assert 80 <= low <= 100 and high == 200, (low, high)
    files = segment_files(rbroker, topic)
    assert files[0] == f"{low:020d}.log", files
    # The old segment files are really gone from the data directory.
    assert all(int(name.split(".")[0]) >= low for name in files), files
    assert not list((rbroker.data_dir / f"{topic}-0").glob("*.deleted"))
    # A consumer from the beginning starts at the new low watermark.
    c = Consumer({"bootstrap.servers": rbroker.bootstrap, "group.id": unique_topic("g"),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + 30
    while len(got) < high - low and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m)
    c.close()
    assert [m.offset() for m in got] == list(range(low, high))
    assert all(m.value().startswith(b"new") for m in got if m.offset() >= 100)
    assert "deleting segment" in rbroker.stderr_text()


def test_expired_active_segment_is_rolled_and_everything_goes(rbroker):
    topic = unique_topic("ret-all")
    create_topic(rbroker.bootstrap, topic,
                 config={"segment.bytes": str(SEGMENT_BYTES), "retention.ms": "60000"})
    produce(rbroker.bootstrap, topic, values("old", 30),
            timestamp_ms=int(time.time() * 1000) - 120_000)
    wait_for(lambda: watermarks(rbroker.bootstrap, topic) == (30, 30), what="log emptied")
    assert segment_files(rbroker, topic) == [f"{30:020d}.log"]
    produce(rbroker.bootstrap, topic, [b"after"])
    assert watermarks(rbroker.bootstrap, topic) == (30, 31)


def test_a_consumer_that_keeps_up_loses_nothing_while_size_retention_deletes(rbroker):
    topic = unique_topic("ret-keepup")
    create_topic(rbroker.bootstrap, topic,
                 config={"segment.bytes": str(SEGMENT_BYTES), "retention.bytes": "4096"})
    c = Consumer({"bootstrap.servers": rbroker.bootstrap, "group.id": unique_topic("g"),
                  "auto.offset.reset": "error", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    p = producer(rbroker.bootstrap)
    got = []
    total, chunk = 600, 10
    for start in range(0, total, chunk):
        for v in values("m", total)[start:start + chunk]:
            p.produce(topic, value=v, partition=0)
        assert p.flush(30) == 0
        deadline = time.monotonic() + 20
        while len(got) < start + chunk and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            assert not m.error(), m.error()
            got.append(m)
        if start == total // 2:
            # Mid-read: retention has already deleted segments under the consumer.
            wait_for(lambda: watermarks(rbroker.bootstrap, topic)[0] > 0,
                     what="retention during the read")
    c.close()
    assert [m.offset() for m in got] == list(range(total))
    assert [m.value() for m in got] == values("m", total)
    # Once retention catches up, the partition is bounded by retention.bytes and its
    # first file starts at the low watermark.
    part_dir = rbroker.data_dir / f"{topic}-0"

    def bounded():
        low = watermarks(rbroker.bootstrap, topic)[0]
        files = segment_files(rbroker, topic)
        try:
            size = sum((part_dir / name).stat().st_size for name in files)
        except FileNotFoundError:  # deleted between listing and stat: look again
            return False
        return files[0] == f"{low:020d}.log" and 4096 <= size < 4096 + SEGMENT_BYTES
    wait_for(bounded, what="the partition to shrink to retention.bytes")


def fall_behind(broker, topic, group, commit_offset):
    """Commits `commit_offset` for `group`, then produces until size retention deleted it."""
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, 0, commit_offset)], asynchronous=False)
    c.close()
    produce(broker.bootstrap, topic, values("later", 200))
    wait_for(lambda: watermarks(broker.bootstrap, topic)[0] > commit_offset + 50,
             what="retention past the committed offset")


def first_after_reset(poll_one, broker, topic, policy):
    """Polls until the reset consumer yields a record; with `latest`, keeps producing
    markers until one arrives. Returns (offset, value) of the first record."""
    low, high = watermarks(broker.bootstrap, topic)
    p = producer(broker.bootstrap)
    deadline = time.monotonic() + 40
    n = 0
    while time.monotonic() < deadline:
        got = poll_one()
        if got is not None:
            return got, low, high
        if policy == "latest":
            p.produce(topic, value=f"marker-{n}".encode(), partition=0)
            p.flush(10)
            n += 1
    raise AssertionError("the consumer never received a record after the reset")


def make_lagging_topic(broker):
    topic = unique_topic("ret-lag")
    create_topic(broker.bootstrap, topic,
                 config={"segment.bytes": str(SEGMENT_BYTES), "retention.bytes": "4096"})
    produce(broker.bootstrap, topic, values("first", 50))
    return topic


@pytest.mark.parametrize("policy", ["earliest", "latest"])
def test_confluent_consumer_that_fell_behind_resets_per_policy(rbroker, policy):
    topic = make_lagging_topic(rbroker)
    group = unique_topic("g")
    fall_behind(rbroker, topic, group, 10)
    c = Consumer({"bootstrap.servers": rbroker.bootstrap, "group.id": group,
                  "auto.offset.reset": policy, "enable.auto.commit": False})
    c.subscribe([topic])

    def poll_one():
        m = c.poll(0.3)
        if m is None or m.error():
            return None
        return m.offset(), m.value()

    try:
        (offset, value), low, high = first_after_reset(poll_one, rbroker, topic, policy)
    finally:
        c.close()
    if policy == "earliest":
        assert offset >= low > 10 and value.startswith(b"later"), (offset, low)
        assert offset <= watermarks(rbroker.bootstrap, topic)[0] + 40
    else:
        assert offset >= high and value.startswith(b"marker"), (offset, high, value)


@pytest.mark.parametrize("policy", ["earliest", "latest"])
def test_kafka_python_consumer_that_fell_behind_resets_per_policy(rbroker, policy):
    from kafka import KafkaConsumer

    topic = make_lagging_topic(rbroker)
    group = unique_topic("g")
    fall_behind(rbroker, topic, group, 10)
    c = KafkaConsumer(topic, bootstrap_servers=rbroker.bootstrap, group_id=group,
                      auto_offset_reset=policy, enable_auto_commit=False)

    def poll_one():
        batches = c.poll(timeout_ms=300, max_records=1)
        for records in batches.values():
            for r in records:
                return r.offset, r.value
        return None

    try:
        (offset, value), low, high = first_after_reset(poll_one, rbroker, topic, policy)
    finally:
        c.close()
    if policy == "earliest":
        assert offset >= low > 10 and value.startswith(b"later"), (offset, low)
    else:
        assert offset >= high and value.startswith(b"marker"), (offset, high, value)


def test_confluent_delete_records_moves_the_start_and_survives_sigkill(rbroker):
    topic = unique_topic("dr")
    create_topic(rbroker.bootstrap, topic, config={"segment.bytes": str(SEGMENT_BYTES)})
    produce(rbroker.bootstrap, topic, values("v", 100))
    files_before = segment_files(rbroker, topic)
    admin = AdminClient({"bootstrap.servers": rbroker.bootstrap})
    futures = admin.delete_records([TopicPartition(topic, 0, 55)])
    deleted = list(futures.values())[0].result(timeout=30)
    assert deleted.low_watermark == 55
    assert watermarks(rbroker.bootstrap, topic) == (55, 100)
    files_after = segment_files(rbroker, topic)
    assert len(files_after) < len(files_before)
    assert int(files_after[0].split(".")[0]) <= 55
    # Beyond the high watermark: OFFSET_OUT_OF_RANGE.
    with pytest.raises(KafkaException) as excinfo:
        list(admin.delete_records([TopicPartition(topic, 0, 1000)]).values())[0].result(
            timeout=30)
    assert "OFFSET_OUT_OF_RANGE" in str(excinfo.value) or "out of range" in str(
        excinfo.value).lower()

    def consume_from_beginning():
        c = Consumer({"bootstrap.servers": rbroker.bootstrap, "group.id": unique_topic("g"),
                      "auto.offset.reset": "earliest", "enable.auto.commit": False})
        c.subscribe([topic])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < 45 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(m)
        c.close()
        return got

    got = consume_from_beginning()
    assert [m.offset() for m in got] == list(range(55, 100))
    assert got[0].value() == values("v", 100)[55]
    # The new start is durable: SIGKILL, restart, same low watermark.
    rbroker.restart(sig=signal.SIGKILL)
    assert watermarks(rbroker.bootstrap, topic) == (55, 100)
    got = consume_from_beginning()
    assert [m.offset() for m in got] == list(range(55, 100))
    # OFFSET_END (-1): everything up to the high watermark.
    deleted = list(admin.delete_records([TopicPartition(topic, 0, -1)]).values())[0].result(
        timeout=30)
    assert deleted.low_watermark == 100
    assert watermarks(rbroker.bootstrap, topic) == (100, 100)


def test_kafka_python_delete_records(rbroker):
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTopicPartition

    topic = unique_topic("dr-kp")
    create_topic(rbroker.bootstrap, topic, config={"segment.bytes": str(SEGMENT_BYTES)})
    produce(rbroker.bootstrap, topic, values("v", 60))
    admin = KafkaAdminClient(bootstrap_servers=rbroker.bootstrap)
    try:
        result = admin.delete_records({KTopicPartition(topic, 0): 30})
        ((tp, meta),) = result.items()
        low = meta["low_watermark"] if isinstance(meta, dict) else meta.low_watermark
        assert low == 30
        assert watermarks(rbroker.bootstrap, topic) == (30, 60)
        with pytest.raises(Exception) as excinfo:
            admin.delete_records({KTopicPartition(topic, 0): 61})
        assert "OffsetOutOfRange" in type(excinfo.value).__name__ or "OutOfRange" in repr(
            excinfo.value)
    finally:
        admin.close()
