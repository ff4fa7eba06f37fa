"""`sluice bench produce|consume|e2e` against a real broker: counts add up, every
latency field is present and ordered, and confluent-kafka reads back exactly what the
bench producer wrote. Never asserts speed (numbers belong in BENCHMARKS.md)."""

import json
import subprocess
import time

from confluent_kafka import Consumer, TopicPartition

from conftest import confluent_consume_all, sluice_bin, unique_topic

LATENCY_FIELDS = ["p50_ms", "p99_ms", "p999_ms", "max_ms"]


def bench(bootstrap, mode, *args, check=True, timeout=120):
    proc = subprocess.run(
        [sluice_bin(), "bench", mode, "-b", bootstrap, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def bench_json(bootstrap, mode, *args):
    proc = bench(bootstrap, mode, *args, "--json")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON object, got: {proc.stdout!r}"
    report = json.loads(lines[0])
    assert report["mode"] == mode
    assert report["errors"] == 0, report
    assert report["first_error"] is None
    return report


def assert_latency_ordered(report):
    latency = report["latency"]
    for field in LATENCY_FIELDS + ["mean_ms", "count"]:
        assert field in latency, f"missing latency.{field}: {latency}"
    values = [latency[f] for f in LATENCY_FIELDS]
    assert all(v >= 0 for v in values), latency
    assert values == sorted(values), f"percentiles out of order: {latency}"
    assert latency["count"] > 0, latency
    assert latency["max_ms"] > 0, latency


def watermarks(bootstrap, topic, partitions):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused"})
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            for p in range(partitions)
        }
    finally:
        c.close()


def test_produce_then_consume_and_confluent_reads_every_message(make_broker):
    b = make_broker()
    topic = unique_topic("bench")
    produced = bench_json(
        b.bootstrap, "produce", "--topic", topic, "--partitions", "4", "--messages", "2000",
        "--message-bytes", "100", "--compression", "lz4", "--producers", "2",
        "--max-in-flight", "3")
    assert produced["messages"] == 2000
    assert produced["produced_messages"] == 2000
    assert produced["bytes"] == 2000 * 100
    assert produced["partitions"] == 4
    assert produced["producers"] == 2
    assert produced["acks"] == "all"
    assert produced["compression"] == "lz4"
    assert produced["coordinated_omission_corrected"] is False
    assert produced["msgs_per_sec"] > 0 and produced["mb_per_sec"] > 0
    assert produced["latency"]["count"] == 2000  # one latency per record
    assert_latency_ordered(produced)

    # A third-party client sees exactly what the bench producer wrote, per partition.
    marks = watermarks(b.bootstrap, topic, 4)
    assert sum(high - low for low, high in marks.values()) == 2000, marks
    assert all(high > 0 for _, high in marks.values()), f"round-robin missed a partition: {marks}"
    messages = confluent_consume_all(b.bootstrap, topic, [0, 1, 2, 3], 2000)
    per_partition = {}
    for m in messages:
        assert len(m.value()) == 100
        assert m.key() is None
        per_partition[m.partition()] = per_partition.get(m.partition(), 0) + 1
    assert per_partition == {p: high - low for p, (low, high) in marks.items()}

    consumed = bench_json(b.bootstrap, "consume", "--topic", topic)
    assert consumed["messages"] == 2000
    assert consumed["partitions"] == 4
    assert consumed["bytes"] > 0
    assert consumed["coordinated_omission_corrected"] is False
    assert_latency_ordered(consumed)

    # --messages caps what consume reads.
    capped = bench_json(b.bootstrap, "consume", "--topic", topic, "--messages", "500")
    assert 500 <= capped["messages"] <= 2000


def test_e2e_at_a_fixed_rate_counts_every_message(make_broker):
    b = make_broker()
    topic = unique_topic("e2e")
    report = bench_json(
        b.bootstrap, "e2e", "--topic", topic, "--partitions", "3", "--messages", "1000",
        "--rate", "2000", "--acks", "1", "--message-bytes", "256")
    assert report["messages"] == 1000
    assert report["produced_messages"] == 1000
    assert report["bytes"] == 1000 * 256
    assert report["coordinated_omission_corrected"] is True
    assert report["target_rate_msgs_per_sec"] == 2000
    assert report["latency"]["count"] == 1000  # one latency per consumed record
    assert_latency_ordered(report)
    marks = watermarks(b.bootstrap, topic, 3)
    assert sum(high for _, high in marks.values()) == 1000, marks


def test_e2e_unpaced_with_compression_and_several_producers(make_broker):
    b = make_broker()
    topic = unique_topic("e2e")
    # Run twice on one topic: the second run starts at the log end, not at offset 0.
    for _ in range(2):
        report = bench_json(
            b.bootstrap, "e2e", "--topic", topic, "--partitions", "2", "--messages", "3000",
            "--compression", "zstd", "--producers", "3", "--message-bytes", "64")
        assert report["messages"] == report["produced_messages"] == 3000
        assert_latency_ordered(report)
    marks = watermarks(b.bootstrap, topic, 2)
    assert sum(high for _, high in marks.values()) == 6000, marks


def test_produce_for_a_duration_with_acks_0(make_broker):
    b = make_broker()
    topic = unique_topic("dur")
    report = bench_json(
        b.bootstrap, "produce", "--topic", topic, "--duration", "1", "--rate", "500",
        "--acks", "0", "--message-bytes", "10")
    assert report["acks"] == "0"
    assert report["coordinated_omission_corrected"] is True
    assert 0 < report["messages"] <= 500
    assert_latency_ordered(report)
    # acks=0 gets no answer; the writes still land, in order, on one connection.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        total = sum(high for _, high in watermarks(b.bootstrap, topic, 1).values())
        if total == report["messages"]:
            break
        time.sleep(0.2)
    assert total == report["messages"]


def test_human_output_and_errors(make_broker):
    b = make_broker()
    topic = unique_topic("txt")
    proc = bench(b.bootstrap, "produce", "--topic", topic, "--messages", "100")
    assert "throughput:" in proc.stdout and "p99.9" in proc.stdout, proc.stdout
    # Not a terminal: no progress bar drawn.
    assert "msgs/s" not in proc.stderr, proc.stderr

    proc = bench(b.bootstrap, "e2e", "--topic", topic, "--message-bytes", "4", check=False)
    assert proc.returncode != 0
    assert "message-bytes" in proc.stderr
    assert "panicked" not in proc.stderr

    proc = bench(b.bootstrap, "produce", "--acks", "2", check=False)
    assert proc.returncode != 0 and "acks" in proc.stderr

    closed = b.bootstrap.rsplit(":", 1)[0] + ":1"
    proc = bench(closed, "produce", "--messages", "10", check=False, timeout=60)
    assert proc.returncode != 0
    assert "cannot connect" in proc.stderr, proc.stderr
    assert "panicked" not in proc.stderr
