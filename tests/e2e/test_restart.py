"""Crash safety: SIGKILL the broker and check every acknowledged record."""

import os
import signal
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import confluent_consume_all, create_topic, unique_topic


def make_producer(bootstrap, **kw):
    conf = {"bootstrap.servers": bootstrap, "enable.idempotence": False, "acks": "all",
            "linger.ms": 2, "message.timeout.ms": 30000}
    conf.update(kw)
    return Producer(conf)


def watermarks(bootstrap, topic, partitions):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=15) for p in partitions}
    finally:
        c.close()


def produce_acked(bootstrap, topic, values_by_partition, **conf):
    """Produce, flush, return {partition: [offsets]} after asserting success."""
    p = make_producer(bootstrap, **conf)
    acked = {}
    errors = []

    def cb(err, msg):
        if err:
            errors.append(err)
        else:
            acked.setdefault(msg.partition(), []).append((msg.offset(), msg.value()))

    for part, values in values_by_partition.items():
        for v in values:
            while True:
                try:
                    p.produce(topic, value=v, partition=part, on_delivery=cb)
                    break
                except BufferError:
                    p.poll(0.1)
            p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors[:5]
    return acked


def read_partitions(bootstrap, topic, partitions):
    wm = watermarks(bootstrap, topic, partitions)
    out = {}
    for part in partitions:
        low, high = wm[part]
        assert low == 0
        msgs = confluent_consume_all(bootstrap, topic, [part], high, timeout=90) if high else []
        out[part] = [(m.offset(), m.value()) for m in msgs]
    return out


def test_sigkill_after_acked_writes(make_broker):
    b = make_broker(settings={"num.partitions": 3})
    topic = unique_topic("crash")
    create_topic(b.bootstrap, topic, partitions=3)
    sent = {p: [f"p{p}-m{i}-".encode() + os.urandom(20).hex().encode() for i in range(1000)]
            for p in range(3)}
    acked = produce_acked(b.bootstrap, topic, sent)
    for p in range(3):
        assert [o for o, _ in acked[p]] == list(range(1000))

    rc = b.kill(signal.SIGKILL)
    assert rc == -signal.SIGKILL
    b.start()

    got = read_partitions(b.bootstrap, topic, range(3))
    for p in range(3):
        assert [v for _, v in got[p]] == sent[p], f"partition {p} differs after restart"
        assert [o for o, _ in got[p]] == list(range(1000))

    # the log keeps going at the right offset after the restart
    more = produce_acked(b.bootstrap, topic, {0: [b"after-restart"]})
    assert more[0] == [(1000, b"after-restart")]


def test_sigkill_during_load(make_broker):
    b = make_broker(settings={"num.partitions": 2})
    topic = unique_topic("load")
    create_topic(b.bootstrap, topic, partitions=2)

    acked = {}  # value -> (partition, offset)
    sent_values = set()
    stop = threading.Event()
    lock = threading.Lock()
    p = make_producer(b.bootstrap, **{"message.timeout.ms": 5000, "retries": 0,
                                       "queue.buffering.max.messages": 20000})

    def cb(err, msg):
        if err is None:
            with lock:
                acked[msg.value()] = (msg.partition(), msg.offset())

    def load():
        i = 0
        while not stop.is_set():
            v = f"load-{i:08d}-".encode() + b"x" * (i % 300)
            with lock:
                sent_values.add(v)
            try:
                p.produce(topic, value=v, partition=i % 2, on_delivery=cb)
                i += 1
            except BufferError:
                p.poll(0.01)
                continue
            if i % 50 == 0:
                p.poll(0)
                time.sleep(0.001)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        p.poll(0.1)
        with lock:
            if len(acked) > 2000:
                break
    time.sleep(0.5)
    b.kill(signal.SIGKILL)
    stop.set()
    t.join(10)
    # deliver the reports that had arrived before the kill, drop the rest
    p.poll(0.5)
    p.purge()
    p.flush(10)
    with lock:
        acked_snapshot = dict(acked)
        sent_snapshot = set(sent_values)
    assert len(acked_snapshot) > 100, "too little was acknowledged before the kill"
    print(f"acked before kill: {len(acked_snapshot)} of {len(sent_snapshot)} sent")

    b.start()
    got = read_partitions(b.bootstrap, topic, [0, 1])
    for part in (0, 1):
        offs = [o for o, _ in got[part]]
        assert offs == list(range(len(offs))), f"partition {part}: offsets not contiguous"
        for o, v in got[part]:
            assert v in sent_snapshot, f"garbage at {part}/{o}: {v[:60]!r}"
    position = {(part, o): v for part in (0, 1) for o, v in got[part]}
    missing = [(v, po) for v, po in acked_snapshot.items() if position.get(po) != v]
    assert not missing, f"{len(missing)} acknowledged records lost/moved, e.g. {missing[:3]}"


def _log_files(data_dir: Path, topic):
    return sorted(data_dir.rglob("*.log"))


def test_many_segments_and_torn_tail(make_broker):
    b = make_broker(settings={"num.partitions": 2, "log.segment.bytes": 65536})
    topic = unique_topic("segs")
    create_topic(b.bootstrap, topic, partitions=2)
    sent = {p: [f"p{p}-{i:06d}-".encode() + os.urandom(400) for i in range(1500)] for p in range(2)}
    # small producer batches: segments roll only at batch boundaries
    acked = produce_acked(b.bootstrap, topic, sent, **{"batch.size": 8192, "linger.ms": 0})
    assert all(len(acked[p]) == 1500 for p in range(2))

    logs = [f for f in _log_files(b.data_dir, topic) if topic in str(f)]
    assert len(logs) >= 2 * 8, f"expected many segments, found {len(logs)}: {logs[:5]}"

    b.kill(signal.SIGKILL)

    # simulate a torn write: garbage after the last batch of partition 0
    part0 = [f for f in logs if f.parent.name.endswith("-0")]
    assert part0, logs[:5]
    last = max(part0, key=lambda f: f.name)
    with open(last, "ab") as f:
        f.write(os.urandom(333))

    b.start()
    got = read_partitions(b.bootstrap, topic, [0, 1])
    for p in range(2):
        assert [v for _, v in got[p]] == sent[p], f"partition {p} differs after restart"

    # appends continue after the truncated tail and are readable
    more = produce_acked(b.bootstrap, topic, {0: [b"tail-1", b"tail-2"]})
    assert [o for o, _ in more[0]] == [1500, 1501]
    msgs = confluent_consume_all(b.bootstrap, topic, [0], 2, start_offset=1500)
    assert [m.value() for m in msgs] == [b"tail-1", b"tail-2"]
    b.stop()


def test_metadata_survives_restart(make_broker):
    """Topics, partition counts (incl. CreatePartitions), topic configs and
    deletions persist across SIGKILL and SIGTERM restarts."""
    from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, ResourceType

    b = make_broker(settings={"num.partitions": 1})
    keep, grow, gone = unique_topic("keep"), unique_topic("grow"), unique_topic("gone")
    create_topic(b.bootstrap, keep, partitions=3, config={"max.message.bytes": "123456"})
    create_topic(b.bootstrap, grow, partitions=1)
    create_topic(b.bootstrap, gone, partitions=2)
    a = AdminClient({"bootstrap.servers": b.bootstrap})
    a.create_partitions([NewPartitions(grow, 4)])[grow].result(timeout=15)
    produce_acked(b.bootstrap, gone, {0: [b"x"], 1: [b"y"]})
    produce_acked(b.bootstrap, grow, {3: [b"in-new-partition"]})
    a.delete_topics([gone], operation_timeout=15)[gone].result(timeout=15)

    for how in (signal.SIGKILL, signal.SIGTERM):
        rc = b.kill(how)
        if how == signal.SIGTERM:
            assert rc == 0, b.stderr_text()
        b.start()
        a = AdminClient({"bootstrap.servers": b.bootstrap})
        md = a.list_topics(timeout=15)
        assert gone not in md.topics, f"deleted topic came back after {how!r}"
        assert len(md.topics[keep].partitions) == 3
        assert len(md.topics[grow].partitions) == 4
        cfg = list(a.describe_configs([ConfigResource(ResourceType.TOPIC, keep)]).values())[0].result(timeout=15)
        assert cfg["max.message.bytes"].value == "123456"
        msgs = confluent_consume_all(b.bootstrap, grow, [3], 1)
        assert msgs[0].value() == b"in-new-partition"

    # re-creating the deleted topic starts empty
    create_topic(b.bootstrap, gone, partitions=2)
    wm = watermarks(b.bootstrap, gone, [0, 1])
    assert wm == {0: (0, 0), 1: (0, 0)}


def test_missing_indexes_rebuilt(make_broker):
    """Delete every .index/.timeindex file while the broker is down: reads by
    offset and by timestamp still work after restart."""
    b = make_broker(settings={"log.segment.bytes": 32768})
    topic = unique_topic("idx")
    create_topic(b.bootstrap, topic, partitions=1)
    t0 = int(time.time() * 1000) - 1_000_000
    p = make_producer(b.bootstrap, **{"batch.size": 4096, "linger.ms": 0})
    for i in range(800):
        p.produce(topic, value=f"{i:05d}".encode() + b"." * 200, partition=0, timestamp=t0 + i * 10)
        if i % 100 == 0:
            p.flush(30)
    assert p.flush(30) == 0
    b.kill(signal.SIGKILL)
    removed = [f for f in b.data_dir.rglob("*") if f.suffix in (".index", ".timeindex")]
    for f in removed:
        f.unlink()
    assert removed, "no index files found to remove"
    b.start()

    def check():
        c = Consumer({"bootstrap.servers": b.bootstrap, "group.id": "unused",
                      "enable.auto.commit": False})
        try:
            for i in (0, 1, 399, 400, 401, 799):
                res = c.offsets_for_times([TopicPartition(topic, 0, t0 + i * 10 - 5)], timeout=15)
                assert res[0].offset == i, (i, res[0].offset)
        finally:
            c.close()
        for start in (0, 333, 799):
            msgs = confluent_consume_all(b.bootstrap, topic, [0], 800 - start, start_offset=start)
            assert [int(m.value()[:5]) for m in msgs] == list(range(start, 800))

    check()
    b.stop()
    b.start()
    check()


def test_time_based_roll(make_broker):
    """log.roll.ms: an append to a segment older than roll.ms starts a new one."""
    b = make_broker(settings={"log.roll.ms": 1000})
    topic = unique_topic("roll")
    create_topic(b.bootstrap, topic, partitions=1)
    produce_acked(b.bootstrap, topic, {0: [b"first"]})
    time.sleep(1.6)
    produce_acked(b.bootstrap, topic, {0: [b"second"]})
    time.sleep(1.6)
    produce_acked(b.bootstrap, topic, {0: [b"third"]})
    logs = [f for f in b.data_dir.rglob("*.log") if topic in str(f)]
    assert len(logs) >= 3, f"expected time-based rolls, segments: {logs}"
    b.kill(signal.SIGKILL)
    b.start()
    msgs = confluent_consume_all(b.bootstrap, topic, [0], 3)
    assert [m.value() for m in msgs] == [b"first", b"second", b"third"]


def test_confluent_idempotent_producer_through_sigkills_and_sigstops(make_broker):
    """A real client (librdkafka, idempotent, acks=all) producing without pause while the
    broker is SIGKILLed and restarted, and SIGSTOPped and resumed, several times: every
    acknowledged record is in the log exactly once, in the order it was produced, and no
    record appears twice even though the producer retried across the faults."""
    b = make_broker(settings={"num.partitions": 3, "log.segment.bytes": 65536})
    topic = unique_topic("loop")
    create_topic(b.bootstrap, topic, partitions=3)
    p = make_producer(b.bootstrap, **{"enable.idempotence": True, "linger.ms": 5,
                                       "message.timeout.ms": 120000,
                                       "reconnect.backoff.max.ms": 200})
    acked = []  # (partition, offset, value) in delivery order
    failed = []
    lock = threading.Lock()
    stop = threading.Event()

    def cb(err, msg):
        with lock:
            if err is None:
                acked.append((msg.partition(), msg.offset(), msg.value()))
            else:
                failed.append(err)

    def load():
        i = 0
        while not stop.is_set():
            try:
                p.produce(topic, key=f"k{i % 30}".encode(), value=f"v{i:08d}".encode(),
                          on_delivery=cb)
                i += 1
            except BufferError:
                p.poll(0.01)
                continue
            if i % 20 == 0:
                p.poll(0)
                time.sleep(0.002)

    def acked_count():
        p.poll(0.05)
        with lock:
            return len(acked)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        for fault in ["SIGKILL", "SIGSTOP", "SIGKILL", "SIGSTOP", "SIGKILL"]:
            target = acked_count() + 500
            deadline = time.monotonic() + 60
            while acked_count() < target:
                assert time.monotonic() < deadline, "no progress between faults"
            if fault == "SIGKILL":
                b.kill(signal.SIGKILL)
                b.start()
            else:
                b.proc.send_signal(signal.SIGSTOP)
                time.sleep(1.5)
                b.proc.send_signal(signal.SIGCONT)
    finally:
        stop.set()
        t.join(10)
    assert p.flush(120) == 0
    assert not failed, failed[:5]
    b.kill(signal.SIGKILL)
    b.start()

    got = read_partitions(b.bootstrap, topic, range(3))
    values = [v for part in got.values() for _, v in part]
    assert len(values) == len(set(values)), "a record is stored twice"
    for part in range(3):
        stored = {v: o for o, v in got[part]}
        mine = [(o, v) for pp, o, v in acked if pp == part]
        for offset, value in mine:
            assert stored.get(value) == offset, f"acked {value} at {part}/{offset} missing or moved"
        # Produced order is value order (one producer); the log keeps it per partition.
        in_log = [v for _, v in got[part]]
        assert in_log == sorted(in_log), f"partition {part} out of produce order"
    assert len(acked) >= 2500
