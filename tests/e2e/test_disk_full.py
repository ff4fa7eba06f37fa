"""Disk full and I/O errors.

Disk full: produce gets KAFKA_STORAGE_ERROR (56), the log is not torn, reads keep
working, writing resumes when space returns, and a SIGKILL + restart finds exactly the
acknowledged records. Needs root and a loop device: the test builds a small ext4 image in
its temp dir and loop-mounts it as the broker's data directory.

A failing fsync: the data directory sits on `faultyfs.py`, a pass-through FUSE file
system that makes fsync return EIO on demand (this kernel has no device-mapper, so
`dm-flakey` is not available; FUSE is). An acks=all produce whose fsync fails gets
KAFKA_STORAGE_ERROR, the partition refuses writes until a restart (the kernel may have
dropped the unwritten pages: nothing after the last good fsync can be trusted), reads keep
working, and a restart recovers every acknowledged record. Needs root, /dev/fuse and
fusepy (in requirements.txt) with libfuse2.

Each test is skipped (with the reason) where the machine cannot provide its file system.
"""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


@pytest.fixture
def faulty_fs(tmp_root):
    """faultyfs.py mounted at tmp_root/mnt; yields (mount point, control dir)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a FUSE file system")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse")
    try:
        import fuse  # noqa: F401
    except (ImportError, OSError, EnvironmentError) as e:
        pytest.skip(f"fusepy or libfuse2 missing: {e}")
    backing, mount_point, control = (tmp_root / n for n in ("backing", "mnt", "control"))
    for d in (backing, mount_point, control):
        d.mkdir()
    log = open(tmp_root / "faultyfs.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("faultyfs.py")),
         str(backing), str(mount_point), str(control)],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while not os.path.ismount(mount_point):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.skip("faultyfs did not mount: "
                            + (tmp_root / "faultyfs.log").read_text(errors="replace"))
            time.sleep(0.05)
        yield mount_point, control
    finally:
        if run(["umount", str(mount_point)]).returncode != 0:
            run(["umount", "-l", str(mount_point)])
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def produce_batches(conn, topic, count):
    """`count` acks=all batches of 10 small records; returns them as (offset, key, value)."""
    acked = []
    for b in range(count):
        records = [record(b * 10 + i) for i in range(10)]
        resp = produce(conn, topic, records)
        assert resp["error_code"] == 0, resp
        acked += [(resp["base_offset"] + i, k, v) for i, (k, v) in enumerate(records)]
    return acked


def test_failed_fsync_answers_storage_error_and_restart_recovers_every_ack(faulty_fs):
    mount_point, control = faulty_fs
    broker = Broker(mount_point)  # its stderr log goes beside, off the faulty fs
    try:
        broker.start()
        topic = unique_topic("fsync")
        create_topic(broker.bootstrap, topic)
        with broker.conn() as c:
            acked = produce_batches(c, topic, 10)

            (control / "fail-fsync").touch()
            # The fsync behind this acks=all produce fails: the producer learns it at
            # once (not as a timeout, never as a success).
            resp = produce(c, topic, [record(1000 + i) for i in range(10)])
            assert resp["error_code"] == KAFKA_STORAGE_ERROR, resp
            # The partition now refuses writes, whatever the acks, even once fsync works
            # again: what follows the last good fsync is unknown until recovery.
            (control / "fail-fsync").unlink()
            resp = kw.produce_v3(c, topic, 0, kw.encode_batch([record(2000)]), acks=1)
            assert resp["error_code"] == KAFKA_STORAGE_ERROR, resp
            # Reads keep working: everything acknowledged is there, byte for byte.
            got, _ = fetch_all(c, topic)
            assert got[:len(acked)] == acked
        broker.assert_alive()
        log_text = broker.stderr_text()
        assert "panicked" not in log_text
        assert "fsync" in log_text.lower(), log_text

        # A restart recovers: every acknowledged record once, in order; the batch whose
        # fsync failed may or may not have survived (it was never acknowledged); writes
        # work again.
        broker.kill(signal.SIGKILL)
        broker.start()
        with broker.conn() as c:
            kw.wait_for_topic(c, topic)
            got, _ = fetch_all(c, topic)
            assert got[:len(acked)] == acked
            unacked = {record(1000 + i) for i in range(10)}
            assert all((k, v) in unacked for _, k, v in got[len(acked):]), got[len(acked):]
            resp = produce(c, topic, [record(3000)])
            assert resp["error_code"] == 0, resp
            assert resp["base_offset"] == len(got)
        broker.assert_alive()
    finally:
        broker.cleanup()


def test_failed_write_is_cut_back_and_writes_resume(faulty_fs):
    mount_point, control = faulty_fs
    broker = Broker(mount_point)  # its stderr log goes beside, off the faulty fs
    try:
        broker.start()
        topic = unique_topic("eio")
        create_topic(broker.bootstrap, topic)
        with broker.conn() as c:
            acked = produce_batches(c, topic, 5)
            (control / "fail-write").touch()
            for attempt in range(3):
                resp = produce(c, topic, [record(1000 + attempt)])
                assert resp["error_code"] == KAFKA_STORAGE_ERROR, resp
            got, high_watermark = fetch_all(c, topic)
            assert got == acked and high_watermark == len(acked)
            # The write error was cut back, so writes resume without a restart, right
            # after the last acknowledged record.
            (control / "fail-write").unlink()
            resp = produce(c, topic, [record(2000)])
            assert resp["error_code"] == 0, resp
            assert resp["base_offset"] == len(acked)
            acked.append((len(acked), *record(2000)))
            got, _ = fetch_all(c, topic)
            assert got == acked
        broker.kill(signal.SIGKILL)
        broker.start()
        with broker.conn() as c:
            kw.wait_for_topic(c, topic)
            got, _ = fetch_all(c, topic)
        assert got == acked
        assert "panicked" not in broker.stderr_text()
    finally:
        broker.cleanup()


def test_broker_keeps_serving_when_its_log_cannot_be_written(faulty_fs):
    # `sluice serve 2>>broker.log` with the log on the failing disk: the error lines
    # cannot be written. That must cost the lines, not the connection (the logging
    # library's fallback `eprintln!` panics when stderr fails).
    mount_point, control = faulty_fs
    broker = Broker(mount_point / "data")  # stderr in mount_point, on the faulty fs
    try:
        broker.start()
        topic = unique_topic("logfail")
        create_topic(broker.bootstrap, topic)
        with broker.conn() as c:
            assert produce(c, topic, [record(1)])["error_code"] == 0
            (control / "fail-write").touch()
            for attempt in range(3):
                resp = produce(c, topic, [record(10 + attempt)])
                assert resp["error_code"] == KAFKA_STORAGE_ERROR, resp
            got, _ = fetch_all(c, topic)
            assert [k for _, k, _ in got] == [record(1)[0]]
            (control / "fail-write").unlink()
            assert produce(c, topic, [record(2)])["error_code"] == 0
        broker.assert_alive()
        assert "panicked" not in broker.stderr_text()
    finally:
        broker.cleanup()
