"""kcat (librdkafka CLI) produce/consume of 10,000 keyed messages."""

import collections
import shutil
import subprocess

import pytest

from conftest import create_topic, unique_topic

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat not installed")

N = 10_000
PARTITIONS = 4


def run(args, timeout=90, **kw):
    p = subprocess.run([KCAT] + args, capture_output=True, timeout=timeout, **kw)
    assert p.returncode == 0, f"kcat {args} failed rc={p.returncode}\nstderr: {p.stderr.decode(errors='replace')}"
    return p


def test_kcat_keyed_produce_consume(broker, tmp_path):
    topic = unique_topic("kcat")
    create_topic(broker.bootstrap, topic, partitions=PARTITIONS)

    # 10,000 messages over 37 keys; value carries the key and a per-key sequence.
    lines = []
    seq = collections.Counter()
    for i in range(N):
        key = f"key-{i % 37}"
        lines.append(f"{key}:{key}#{seq[key]}#msg{i}")
        seq[key] += 1
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")

    p_out = run(["-P", "-b", broker.bootstrap, "-t", topic, "-K:", "-l", str(src),
         "-X", "acks=all", "-X", "enable.idempotence=false",
         "-X", "message.timeout.ms=60000"])
    assert b"failed" not in p_out.stderr.lower(), p_out.stderr

    # metadata
    md = run(["-L", "-b", broker.bootstrap, "-t", topic]).stdout.decode()
    assert f'topic "{topic}" with {PARTITIONS} partitions' in md, md
    for p in range(PARTITIONS):
        assert f"partition {p}," in md, md

    out = run(["-C", "-b", broker.bootstrap, "-t", topic, "-o", "beginning", "-e",
               "-f", "%p|%o|%k|%s\\n"]).stdout.decode()
    rows = [l for l in out.split("\n") if l]
    assert len(rows) == N, f"consumed {len(rows)} of {N}"

    key_partition = {}
    per_key = collections.defaultdict(list)
    per_partition_offsets = collections.defaultdict(list)
    values = set()
    for row in rows:
        p, o, k, v = row.split("|", 3)
        p, o = int(p), int(o)
        assert 0 <= p < PARTITIONS
        assert key_partition.setdefault(k, p) == p, f"key {k} in partitions {key_partition[k]} and {p}"
        vk, vseq, _ = v.split("#")
        assert vk == k, f"value {v!r} under key {k!r}"
        per_key[k].append((o, int(vseq)))
        per_partition_offsets[p].append(o)
        values.add(v)

    assert len(values) == N, "duplicate or missing values"
    assert set(per_key) == {f"key-{i}" for i in range(37)}
    # within a partition (kcat prints each partition in offset order) the
    # offsets are contiguous from 0
    for p, offs in per_partition_offsets.items():
        assert sorted(offs) == list(range(len(offs))), f"partition {p} offsets not contiguous"
    # produce order per key == offset order
    for k, entries in per_key.items():
        entries.sort()
        assert [s for _, s in entries] == list(range(len(entries))), f"key {k} out of order"
    # the keys actually spread over more than one partition
    assert len(set(key_partition.values())) > 1
