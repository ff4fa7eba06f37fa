"""Disk full: produce gets KAFKA_STORAGE_ERROR (56), the log is not torn, reads keep
working, writing resumes when space returns, and a SIGKILL + restart finds exactly the
acknowledged records.

Needs root and a loop device: the test builds a small ext4 image in its temp dir and
loop-mounts it as the broker's data directory. Skipped (with the reason) otherwise.
"""

import errno
import os
import signal
import subprocess

import pytest

import kafka_wire as kw
from conftest import Broker, create_topic, unique_topic

KAFKA_STORAGE_ERROR = 56
IMAGE_BYTES = 64 * 1024 * 1024
# Larger than any block slack at the end of a segment file, so the write needs new blocks.
BIG_VALUE_BYTES = 64 * 1024


def run(args):
    return subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def small_fs(tmp_root):
    """A freshly made ~64 MiB ext4 file system (no root reserve) mounted at tmp_root/mnt."""
    if os.geteuid() != 0:
        pytest.skip("needs root to loop-mount a small file system")
    image = tmp_root / "fs.img"
    mount_point = tmp_root / "mnt"
    mount_point.mkdir()
    with open(image, "wb") as f:
        f.truncate(IMAGE_BYTES)
    made = run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)])
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stdout.strip()}")
    mounted = run(["mount", "-o", "loop", str(image), str(mount_point)])
    if mounted.returncode != 0:
        pytest.skip(f"loop mount failed: {mounted.stdout.strip()}")
    try:
        yield mount_point
    finally:
        if run(["umount", str(mount_point)]).returncode != 0:
            run(["umount", "-l", str(mount_point)])


def fill(path):
    """Writes `path` until the file system says ENOSPC; returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 4096, 512, 1):
            data = b"\0" * chunk
            while True:
                try:
                    n = f.write(data)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
                written += n
                if n < chunk:
                    break
        try:
            os.fsync(f.fileno())
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return written


def record(i, size=100):
    key = f"k{i:06d}".encode()
    value = (f"v{i:06d}-".encode() * (size // 8 + 1))[:size]
    return key, value


def produce(conn, topic, records):
    batch = kw.encode_batch(records)
    return kw.produce_v3(conn, topic, 0, batch, acks=-1)


def fetch_all(conn, topic):
    """Every record of partition 0 as (offset, key, value), and the high watermark."""
    out = []
    offset = 0
    high_watermark = None
    while True:
        p = kw.fetch_v4(conn, topic, 0, offset, max_wait_ms=10,
                        max_bytes=4 << 20, partition_max_bytes=4 << 20)
        assert p["error_code"] == 0, p["error_code"]
        high_watermark = p["high_watermark"]
        fresh = [r for r in p["decoded"] if r["offset"] >= offset]
        out += [(r["offset"], r["key"], r["value"]) for r in fresh]
        if fresh:
            offset = fresh[-1]["offset"] + 1
        if offset >= high_watermark or not fresh:
            return out, high_watermark


def temp_files(data_dir):
    return sorted(str(p) for p in data_dir.rglob("*.tmp"))


def test_disk_full_storage_error_then_recovery(small_fs):
    broker = Broker(small_fs / "data", settings={"log.segment.bytes": 1 << 20})
    filler = small_fs / "filler"
    try:
        broker.start()
        topic = unique_topic("full")
        create_topic(broker.bootstrap, topic)
        acked = []  # (offset, key, value), in order
        with broker.conn() as c:
            # Enough to roll a few segments, so rolls happened before the disk filled.
            for b in range(30):
                records = [record(b * 10 + i, size=5000) for i in range(10)]
                resp = produce(c, topic, records)
                assert resp["error_code"] == 0, resp
                base = resp["base_offset"]
                acked += [(base + i, k, v) for i, (k, v) in enumerate(records)]
            end_before = acked[-1][0] + 1

            fill(filler)

            # Full: every produce fails with KAFKA_STORAGE_ERROR, nothing moves.
            codes = []
            for attempt in range(5):
                big = [record(900000 + attempt * 10 + i, size=BIG_VALUE_BYTES) for i in range(4)]
                codes.append(produce(c, topic, big)["error_code"])
            assert codes == [KAFKA_STORAGE_ERROR] * 5, codes
            broker.assert_alive()
            # Checkpoint, index and snapshot writes that failed removed their temp files.
            assert temp_files(small_fs / "data") == []

            # Reads of existing data keep working, byte-exact, and the end did not move.
            got, high_watermark = fetch_all(c, topic)
            assert high_watermark == end_before
            assert got == acked

        # Space returns: appends work again without a restart, right after the old end.
        filler.unlink()
        os.sync()
        with broker.conn() as c:
            records = [record(5000 + i, size=BIG_VALUE_BYTES) for i in range(4)]
            resp = produce(c, topic, records)
            assert resp["error_code"] == 0, resp
            assert resp["base_offset"] == end_before
            acked += [(end_before + i, k, v) for i, (k, v) in enumerate(records)]
            got, high_watermark = fetch_all(c, topic)
            assert got == acked
        broker.assert_alive()

        log_text = broker.stderr_text()
        # One line per failure kind, not one per request (the limit is one per 10 s).
        assert 1 <= log_text.count("append failed") < len(codes), log_text
        assert "panicked" not in log_text

        # SIGKILL + restart: every acknowledged record exactly once, nothing else.
        broker.kill(signal.SIGKILL)
        broker.start()
        with broker.conn() as c:
            kw.wait_for_topic(c, topic)
            got, high_watermark = fetch_all(c, topic)
        assert high_watermark == acked[-1][0] + 1
        assert got == acked
        assert temp_files(small_fs / "data") == []
    finally:
        broker.cleanup()
        if filler.exists():
            filler.unlink()
