"""Log compaction with the real binary: cleanup.policy=compact topics keep the last value per
key at its original offset, tombstones live for delete.retention.ms, and __consumer_offsets
is compacted while committed offsets survive a restart."""

import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import create_topic, unique_topic

CLEANER_SETTINGS = {
    "log.cleaner.backoff.ms": "200",
    "log.flush.offset.checkpoint.interval.ms": "200",
}


def produce_keyed(bootstrap, topic, pairs, batched=False, **conf):
    """Produce (key, value) pairs (value None = tombstone), one batch each unless `batched`,
    and return the offset each got, in order."""
    producer = Producer(dict({"bootstrap.servers": bootstrap, "acks": "all",
                              "linger.ms": 50 if batched else 0,
                              "enable.idempotence": False}, **conf))
    offsets = [None] * len(pairs)

    def on_delivery(index):
        def callback(err, msg):
            assert err is None, f"delivery failed: {err}"
            offsets[index] = msg.offset()
        return callback

    for i, (key, value) in enumerate(pairs):
        producer.produce(topic, key=key, value=value, partition=0, on_delivery=on_delivery(i))
        if not batched:
            producer.flush(30)
    producer.flush(30)
    assert all(o is not None for o in offsets)
    return offsets


def read_partition(bootstrap, topic, partition=0, timeout=10):
    """Every record of the partition from the beginning: [(offset, key, value)]."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "compaction-reader",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "enable.partition.eof": True})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        consumer.assign([TopicPartition(topic, partition, low)])
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == -191:  # _PARTITION_EOF
                    if not out or out[-1][0] >= high - 1 or high == low:
                        return out
                    continue
                raise AssertionError(f"consume error: {msg.error()}")
            out.append((msg.offset(), msg.key(), msg.value()))
            if msg.offset() >= high - 1:
                return out
        raise AssertionError(f"did not reach the end {high} of {topic}: {out[-3:]}")
    finally:
        consumer.close()


def wait_for(condition, what, timeout=60, interval=0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        ok, last = condition()
        if ok:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def log_bytes(data_dir: Path, topic_dir_prefix: str) -> int:
    return sum(f.stat().st_size for f in data_dir.rglob("*.log")
               if f.parent.name.startswith(topic_dir_prefix))


def test_compaction_keeps_last_value_per_key_at_its_offset(make_broker):
    b = make_broker(settings=CLEANER_SETTINGS)
    topic = unique_topic("compact")
    create_topic(b.bootstrap, topic, 1, config={
        "cleanup.policy": "compact", "segment.bytes": "1024",
        "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "60000"})
    keys = [f"k{i}".encode() for i in range(4)]
    pairs = [(keys[i % 4], f"value-{i}".encode()) for i in range(120)]
    offsets = produce_keyed(b.bootstrap, topic, pairs)
    # Filler records under another key push the last values into rolled segments.
    filler = produce_keyed(b.bootstrap, topic, [(b"filler", b"x" * 700)] * 3)
    last = {}
    for (key, value), offset in zip(pairs, offsets):
        last[key] = (offset, value)

    def compacted():
        records = [r for r in read_partition(b.bootstrap, topic) if r[1] != b"filler"]
        return len(records) == len(keys), records

    records = wait_for(compacted, "the cleaner to compact the topic")
    assert sorted(records) == sorted((o, k, v) for k, (o, v) in last.items())
    # Filler records newer than the last cleaned one are still there, at their offsets.
    all_records = read_partition(b.bootstrap, topic)
    assert all_records[-1][0] == filler[-1]
    assert all(o in offsets or o in filler for o, _, _ in all_records)
    # The log end did not move and the log is smaller than what was written.
    assert log_bytes(b.data_dir, topic) < 120 * 70
    # Compaction survives a restart (offset gaps included).
    b.restart()
    assert read_partition(b.bootstrap, topic) == all_records
    b.assert_alive()


def test_compressed_multi_record_batches_are_compacted_in_their_codec(make_broker):
    b = make_broker(settings=CLEANER_SETTINGS)
    topic = unique_topic("compact-zstd")
    create_topic(b.bootstrap, topic, 1, config={
        "cleanup.policy": "compact", "segment.bytes": "2048",
        "min.cleanable.dirty.ratio": "0.01"})
    pairs = [(f"k{i % 7}".encode(), f"value-{i}".encode() * 5) for i in range(400)]
    offsets = produce_keyed(b.bootstrap, topic, pairs, batched=True, **{"compression.type": "zstd"})
    produce_keyed(b.bootstrap, topic, [(b"filler", b"z" * 1500)] * 3)
    last = {}
    for (key, value), offset in zip(pairs, offsets):
        last[key] = (offset, value)

    def compacted():
        records = [r for r in read_partition(b.bootstrap, topic) if r[1] != b"filler"]
        return len(records) == len(last), records

    records = wait_for(compacted, "the cleaner to compact zstd batches")
    assert sorted(records) == sorted((o, k, v) for k, (o, v) in last.items())
    b.assert_alive()


def test_tombstones_stay_for_delete_retention_then_go(make_broker):
    b = make_broker(settings=CLEANER_SETTINGS)
    topic = unique_topic("tomb")
    create_topic(b.bootstrap, topic, 1, config={
        "cleanup.policy": "compact", "segment.bytes": "200",
        "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "4000"})
    offsets = produce_keyed(b.bootstrap, topic, [
        (b"gone", b"v1"), (b"kept", b"v1"), (b"gone", None)])
    produce_keyed(b.bootstrap, topic, [(b"filler", b"y" * 300)] * 2)
    tombstone = (offsets[2], b"gone", None)

    def old_value_removed():
        records = read_partition(b.bootstrap, topic)
        return (offsets[0], b"gone", b"v1") not in records, records

    records = wait_for(old_value_removed, "the overwritten value to be cleaned")
    first_seen = time.monotonic()
    assert tombstone in records, records
    assert (offsets[1], b"kept", b"v1") in records

    def tombstone_removed():
        records = read_partition(b.bootstrap, topic)
        return tombstone not in records, records

    records = wait_for(tombstone_removed, "the tombstone to expire", timeout=60)
    assert time.monotonic() - first_seen >= 2.0, "tombstone removed before delete.retention.ms"
    assert (offsets[1], b"kept", b"v1") in records
    b.assert_alive()


def test_consumer_offsets_is_compacted_and_commits_survive_restart(make_broker):
    b = make_broker(settings=dict(CLEANER_SETTINGS, **{
        "offsets.topic.num.partitions": "1", "log.roll.ms": "300"}))
    topic = unique_topic("committed")
    create_topic(b.bootstrap, topic, 1)
    group = unique_topic("group")
    consumer = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group,
                         "enable.auto.commit": False})
    commits = 200
    try:
        for i in range(1, commits + 1):
            consumer.commit(offsets=[TopicPartition(topic, 0, i)], asynchronous=False)
            time.sleep(0.01)
    finally:
        consumer.close()
    # One more commit after the roll period, so the last ones are in a rolled segment.
    time.sleep(0.5)
    c2 = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group + "-other",
                   "enable.auto.commit": False})
    try:
        c2.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    finally:
        c2.close()

    # Uncompacted, every commit is at least one 61-byte batch header on disk.
    uncompacted_min_bytes = commits * 61

    def compacted():
        records = read_partition(b.bootstrap, "__consumer_offsets")
        size = log_bytes(b.data_dir, "__consumer_offsets")
        return (len(records) < commits // 4 and size < uncompacted_min_bytes // 4,
                (len(records), records[-1][0] if records else None, size))

    count, last_offset, _ = wait_for(compacted, "__consumer_offsets to be compacted")
    assert last_offset is not None and last_offset >= commits
    b.restart()
    check = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group,
                      "enable.auto.commit": False})
    try:
        committed = check.committed([TopicPartition(topic, 0)], timeout=15)
        assert committed[0].offset == commits
    finally:
        check.close()
    b.assert_alive()


def test_deleted_group_stays_deleted_after_compaction_and_restart(make_broker):
    from confluent_kafka.admin import AdminClient

    b = make_broker(settings=dict(CLEANER_SETTINGS, **{
        "offsets.topic.num.partitions": "1", "log.roll.ms": "300"}))
    topic = unique_topic("deleted")
    create_topic(b.bootstrap, topic, 1)
    doomed, kept = unique_topic("doomed"), unique_topic("kept")
    for group in (doomed, kept):
        consumer = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group,
                             "enable.auto.commit": False})
        try:
            for i in range(1, 30):
                consumer.commit(offsets=[TopicPartition(topic, 0, i)], asynchronous=False)
                time.sleep(0.01)
        finally:
            consumer.close()
    admin = AdminClient({"bootstrap.servers": b.bootstrap})
    admin.delete_consumer_groups([doomed], request_timeout=15)[doomed].result(15)
    # Roll the tombstones into a cleanable segment with one more commit later on.
    time.sleep(0.5)
    other = Consumer({"bootstrap.servers": b.bootstrap, "group.id": kept + "-x",
                      "enable.auto.commit": False})
    try:
        other.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    finally:
        other.close()

    def compacted():
        records = read_partition(b.bootstrap, "__consumer_offsets")
        return len(records) < 20, len(records)

    wait_for(compacted, "__consumer_offsets to be compacted")
    b.restart()
    for group, expected in ((doomed, -1001), (kept, 29)):
        check = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group,
                          "enable.auto.commit": False})
        try:
            committed = check.committed([TopicPartition(topic, 0)], timeout=15)
            assert committed[0].offset == expected, (group, committed[0])
        finally:
            check.close()
    b.assert_alive()
