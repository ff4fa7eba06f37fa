"""The `sluice` command line on the SDK, against the real binary: a file produced with
`sluice produce` comes back whole from `sluice consume`; `sluice consume --exec` runs a
command per record, keeps per-key order while running keys in parallel, parks exactly the
failing records on the dead-letter topic with headers saying where they came from and why,
and commits past them (the group's lag is 0); `sluice dlq list` shows them and
`sluice dlq replay` sends them back to their topic without the dead-letter headers, once."""

import json
import re
import subprocess
import sys
import time

from conftest import confluent_consume_all, create_topic, sluice_bin, unique_topic

SETTINGS = {"group.initial.rebalance.delay.ms": 0, "num.partitions": 1}


def sluice(bootstrap, *args, stdin=None, timeout=120):
    proc = subprocess.run(
        [sluice_bin(), *args, "-b", bootstrap],
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
    return proc


def ok(proc):
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


def group_lag(bootstrap, group):
    described = json.loads(ok(sluice(bootstrap, "group", "describe", group, "-o", "json")).stdout)
    return {(p["topic"], p["partition"]): p["lag"] for p in described["offsets"]}


def test_produce_a_file_and_consume_it_back(make_broker, tmp_path):
    broker = make_broker(settings=SETTINGS)
    topic = unique_topic("file")
    create_topic(broker.bootstrap, topic, partitions=3)
    lines = [f"key-{i % 7}:line {i} ünïcode" for i in range(500)]
    path = tmp_path / "records.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ok(sluice(broker.bootstrap, "produce", topic, "--file", str(path), "--key-separator", ":"))
    out = ok(sluice(broker.bootstrap, "consume", topic, "--from-beginning", "-f", "json",
                    "-n", "500", "--timeout-ms", "10000"))
    got = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert sorted(f"{r['key']}:{r['value']}" for r in got) == sorted(lines)
    # Same key, same partition, file order.
    by_key = {}
    for record in sorted(got, key=lambda r: (r["partition"], r["offset"])):
        by_key.setdefault(record["key"], []).append(record)
    for key, records in by_key.items():
        assert len({r["partition"] for r in records}) == 1, key
        numbers = [int(r["value"].split()[1]) for r in records]
        assert numbers == sorted(numbers), key


def test_exec_dead_letters_exactly_the_failures_and_replay_round_trips(make_broker, tmp_path):
    broker = make_broker(settings=SETTINGS)
    topic = unique_topic("jobs")
    dlq = f"{topic}.dlq"
    create_topic(broker.bootstrap, topic, partitions=3)
    create_topic(broker.bootstrap, dlq, partitions=1)
    lines = [f"k{i % 5}:{'bad' if i % 10 == 3 else 'ok'}-{i}" for i in range(40)]
    ok(sluice(broker.bootstrap, "produce", topic, "--key-separator", ":", "-H", "origin=test",
              stdin=("\n".join(lines) + "\n").encode()))
    done = tmp_path / "done.txt"
    # Fails for values containing "bad"; records every success with its key and offset,
    # sleeping a little so that keys overlap in time.
    script = (
        f"v=$(cat); case \"$v\" in *bad*) echo \"refusing $v\" >&2; exit 3;; esac; "
        f"sleep 0.0$((SLUICE_OFFSET % 5)); echo \"$SLUICE_KEY $SLUICE_PARTITION $SLUICE_OFFSET $v\" >> {done}"
    )
    group = unique_topic("workers")
    run = ok(sluice(broker.bootstrap, "consume", topic, "-g", group, "--from-beginning",
                    "--exec", script, "--max-attempts", "3", "--retry-backoff-ms", "10",
                    "--concurrency", "4", "--timeout-ms", "3000"))
    summary = run.stderr.decode()
    assert "36 handled, 4 dead-lettered" in summary, summary

    handled = [line.split(" ", 3) for line in done.read_text().splitlines()]
    assert sorted(v for _, _, _, v in handled) == sorted(
        line.split(":", 1)[1] for line in lines if "bad" not in line)
    per_key = {}
    for key, partition, offset, _ in handled:
        per_key.setdefault(key, []).append((int(partition), int(offset)))
    for key, positions in per_key.items():
        assert positions == sorted(positions), f"key {key} handled out of order: {positions}"

    assert set(group_lag(broker.bootstrap, group).values()) == {0}, "committed past the dead letters"

    listed = json.loads(ok(sluice(broker.bootstrap, "dlq", "list", dlq, "-o", "json")).stdout)
    parked = listed["records"]
    assert sorted(r["value"] for r in parked) == sorted(
        line.split(":", 1)[1] for line in lines if "bad" in line)
    for record in parked:
        assert record["original_topic"] == topic
        assert record["attempts"] == 3
        assert "exited with exit status: 3" in record["error"]
        assert "refusing" in record["error"]
        assert record["failed_at_ms"] > 0
        assert record["key"] == f"k{int(record['value'].split('-')[1]) % 5}"
    # The original offsets point at the failed records in the source topic.
    source = confluent_consume_all(broker.bootstrap, topic, [0, 1, 2], len(lines))
    at = {(m.partition(), m.offset()): m.value().decode() for m in source}
    for record in parked:
        assert at[(record["original_partition"], record["original_offset"])] == record["value"]

    table = ok(sluice(broker.bootstrap, "dlq", "list", dlq)).stdout.decode()
    assert "ATTEMPTS" in table and f"{topic}-" in table

    replay = json.loads(ok(sluice(broker.bootstrap, "dlq", "replay", dlq, "-o", "json")).stdout)
    assert replay["replayed"] == 4 and replay["to"] == {topic: 4}
    again = json.loads(ok(sluice(broker.bootstrap, "dlq", "replay", dlq, "-o", "json")).stdout)
    assert again["replayed"] == 0, "a second replay sends nothing twice"

    everything = confluent_consume_all(broker.bootstrap, topic, [0, 1, 2], len(lines) + 4)
    replayed = [m for m in everything if (m.partition(), m.offset()) not in at]
    assert sorted(m.value().decode() for m in replayed) == sorted(r["value"] for r in parked)
    key_partition = {key: int(partition) for key, partition, _, _ in handled}
    for message in replayed:
        headers = dict(message.headers() or [])
        assert headers.get("origin") == b"test", "original headers kept"
        assert not any(k.startswith("sluice.dlq.") for k in headers), headers
        # Same key, so back on the key's partition.
        assert message.partition() == key_partition[message.key().decode()]


def test_exec_members_share_a_topic_through_a_rebalance(make_broker, tmp_path):
    """A second `consume --exec` joins while the first is busy: the first hands partitions
    over (finishing and committing what it started), every record is handled, none twice,
    and the group ends with no lag. The first learns of the rebalance from a heartbeat
    (every 3 s), so the work is made to last longer than that."""
    broker = make_broker(settings=SETTINGS)
    topic = unique_topic("shared")
    create_topic(broker.bootstrap, topic, partitions=4)
    lines = [f"k{i % 16}:v-{i}" for i in range(160)]  # k0..k15 cover all 4 partitions
    ok(sluice(broker.bootstrap, "produce", topic, "--key-separator", ":",
              stdin=("\n".join(lines) + "\n").encode()))
    done = tmp_path / "done.txt"
    script = f"v=$(cat); sleep 0.15; echo \"$SLUICE_PARTITION $SLUICE_OFFSET $v\" >> {done}"
    group = unique_topic("pair")
    args = [sluice_bin(), "consume", topic, "-b", broker.bootstrap, "-g", group,
            "--from-beginning", "--exec", script, "--concurrency", "2", "--timeout-ms", "4000"]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not done.exists() or len(done.read_text().splitlines()) < 10):
        time.sleep(0.1)
    second = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    for proc, (_, err) in zip((first, second), outputs):
        assert proc.returncode == 0, err.decode(errors="replace")
    handled = done.read_text().splitlines()
    values = [line.split(" ", 2)[2] for line in handled]
    assert sorted(values) == sorted(line.split(":", 1)[1] for line in lines), "each exactly once"
    assert set(group_lag(broker.bootstrap, group).values()) == {0}
    summaries = [err.decode() for _, err in outputs]
    counts = [int(re.search(r"processed (\d+) record", summary).group(1)) for summary in summaries]
    assert sum(counts) == len(lines), summaries
    assert min(counts) > 0, f"both members did part of the work: {counts}"


def test_exec_needs_a_group(make_broker):
    broker = make_broker(settings=SETTINGS)
    proc = sluice(broker.bootstrap, "consume", "t", "--exec", "true")
    assert proc.returncode == 2, "a usage error"
    assert b"--group" in proc.stderr


if __name__ == "__main__":
    sys.exit("run with pytest")
