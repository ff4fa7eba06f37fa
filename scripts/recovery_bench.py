#!/usr/bin/env python3
"""Measures how long a release broker takes to start over a large log (issue 7).

    python3 scripts/recovery_bench.py              # 10 GiB, 3 restarts of each kind
    GIB=2 RUNS=3 python3 scripts/recovery_bench.py

It builds the release binary, starts `sluice serve` on a temporary data directory, writes
GIB GiB with `sluice bench produce --acks 1` over several topics (1 and 8 partitions, 100 B
and 1 KiB records), then restarts the broker RUNS times after a clean SIGTERM and RUNS times
after a SIGKILL in the middle of a produce load (KILL_AFTER seconds into it), timing each
restart from the spawn until the listener accepts a connection. It prints a Markdown table
of medians (min and max alongside) and the command that produced it on stdout.

Environment: GIB (default 10), KILL_LOAD_RATE (messages per second of the load a SIGKILL
interrupts, 100 B each over 8 partitions; default 200000), SLUICE_BIN (a binary to use instead of building one), RUNS (3), KILL_AFTER (3 seconds), WORK (a directory for the
data, default a temporary one; deleted at the end unless KEEP=1; a directory that already
holds enough data is reused as it is), WARM=1 (keep the data in the page
cache; by default every data file is fsynced and evicted with POSIX_FADV_DONTNEED before each
restart, as after a reboot, which is what makes a full scan expensive),
SLUICE_BENCH_BROKER_ARGS (extra `serve` arguments).

Only the standard library is used.
"""

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB_TARGET = float(os.environ.get("GIB", "10"))
RUNS = int(os.environ.get("RUNS", "3"))
KILL_AFTER_SEC = float(os.environ.get("KILL_AFTER", "3"))
# Messages per second of the load a SIGKILL interrupts: enough to leave an unchecked tail,
# little enough that the runs do not grow the log much.
KILL_LOAD_RATE = int(os.environ.get("KILL_LOAD_RATE", "200000"))
WARM = os.environ.get("WARM") == "1"
KEEP = os.environ.get("KEEP") == "1"
EXTRA_BROKER_ARGS = os.environ.get("SLUICE_BENCH_BROKER_ARGS", "").split()
START_TIMEOUT_SEC = 900
GIB = 1024 ** 3

# (topic name prefix, partitions, message bytes): the shapes of scripts/bench.py's matrix.
SHAPES = [("p1-100b", 1, 100), ("p8-100b", 8, 100), ("p1-1k", 1, 1024), ("p8-1k", 8, 1024)]


def log(message):
    print(f"[recovery-bench] {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dir_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def evict_from_page_cache(path):
    """Writes back and drops the cached pages of every file under `path` (fsync, then
    POSIX_FADV_DONTNEED), as after a reboot, without touching anyone else's cache."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


class Broker:
    """A release `sluice serve` on a fixed port and data directory."""

    def __init__(self, binary, work, data):
        self.binary, self.work, self.data = binary, work, data
        self.port = free_port()
        self.process = None
        self.generation = 0

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        """Spawns the broker; returns the seconds until its port accepts connections and the
        bytes it read from the disk until then."""
        self.generation += 1
        log_file = open(self.work / f"broker-{self.generation}.log", "w")
        started = time.monotonic()
        self.process = subprocess.Popen(
            [self.binary, "serve", "--listen", self.bootstrap, "--data-dir", str(self.data),
             *EXTRA_BROKER_ARGS],
            stdout=log_file, stderr=log_file)
        log_file.close()
        while time.monotonic() < started + START_TIMEOUT_SEC:
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited with {self.process.returncode}; see "
                                   f"{self.work / f'broker-{self.generation}.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return time.monotonic() - started, self.disk_read_bytes()
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("broker did not start in time")

    def disk_read_bytes(self):
        """Bytes the broker made the kernel fetch from the disk so far (/proc/<pid>/io)."""
        for line in Path(f"/proc/{self.process.pid}/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
        return 0

    def terminate(self):
        self.process.terminate()
        self.process.wait(timeout=300)

    def kill(self):
        self.process.kill()
        self.process.wait()


def produce(binary, broker, topic, partitions, message_bytes, duration_sec, rate=0):
    return subprocess.Popen(
        [binary, "bench", "produce", "-b", broker.bootstrap, "--topic", topic,
         "--partitions", str(partitions), "--message-bytes", str(message_bytes),
         "--duration", str(duration_sec), "--acks", "1", "--rate", str(rate), "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fill(binary, broker, target_bytes):
    """Writes until the data directory holds `target_bytes`, ~10 s per topic."""
    round_ = 0
    while dir_bytes(broker.data) < target_bytes:
        prefix, partitions, message_bytes = SHAPES[round_ % len(SHAPES)]
        topic = f"{prefix}-{round_}"
        produce(binary, broker, topic, partitions, message_bytes, 10).wait()
        round_ += 1
        log(f"wrote {topic}: {dir_bytes(broker.data) / GIB:.2f} GiB in the data directory")
    return round_


def restart_after_sigterm(broker):
    broker.terminate()
    if not WARM:
        evict_from_page_cache(broker.data)
    return broker.start()


def restart_after_sigkill(binary, broker):
    prefix, partitions, message_bytes = SHAPES[1]
    load = produce(binary, broker, f"{prefix}-kill", partitions, message_bytes,
                   int(KILL_AFTER_SEC) + 5, KILL_LOAD_RATE)
    time.sleep(KILL_AFTER_SEC)
    broker.kill()
    load.kill()
    load.wait()
    if not WARM:
        evict_from_page_cache(broker.data)
    return broker.start()


def summary(label, runs):
    seconds = [run[0] for run in runs]
    read_mib = statistics.median(run[1] for run in runs) / 1024 ** 2
    return (f"| {label} | {len(seconds)} | {statistics.median(seconds):.2f} | "
            f"{min(seconds):.2f} | {max(seconds):.2f} | {read_mib:.1f} |")


def main():
    if "SLUICE_BIN" in os.environ:
        binary = os.environ["SLUICE_BIN"]
    else:
        log("building the release binary")
        subprocess.run(["cargo", "build", "--release", "-p", "sluice"], cwd=ROOT, check=True)
        binary = str(ROOT / "target" / "release" / "sluice")
    work = Path(os.environ["WORK"]) if "WORK" in os.environ else Path(
        tempfile.mkdtemp(prefix="sluice-recovery-"))
    work.mkdir(parents=True, exist_ok=True)
    broker = Broker(binary, work, work / "data")
    try:
        broker.start()
        fill(binary, broker, int(GIB_TARGET * GIB))
        size_gib = dir_bytes(broker.data) / GIB
        partitions = sum(1 for entry in broker.data.iterdir()
                         if entry.is_dir() and not entry.name.startswith("__"))
        log(f"{size_gib:.2f} GiB over {partitions} partitions; restarting after SIGTERM")
        sigterm = []
        for run in range(RUNS):
            sigterm.append(restart_after_sigterm(broker))
            log(f"SIGTERM run {run + 1}: {sigterm[-1][0]:.2f} s, {sigterm[-1][1]} bytes read")
        sigkill = []
        for run in range(RUNS):
            sigkill.append(restart_after_sigkill(binary, broker))
            log(f"SIGKILL run {run + 1}: {sigkill[-1][0]:.2f} s, {sigkill[-1][1]} bytes read")
        broker.terminate()
    finally:
        if broker.process is not None and broker.process.poll() is None:
            broker.process.kill()
            broker.process.wait()
        if not KEEP:
            shutil.rmtree(work, ignore_errors=True)
    cache = "warm page cache" if WARM else "data evicted from the page cache before each start"
    print(f"Restart time of a release broker over {size_gib:.2f} GiB in {partitions} partitions "
          f"({cache}); seconds from spawn until the port accepts, and what the broker read "
          "from the disk until then (`read_bytes` of /proc/<pid>/io).\n")
    print("| restart | runs | median s | min s | max s | median MiB read from disk |")
    print("|---|---|---|---|---|---|")
    print(summary("after SIGTERM (clean shutdown)", sigterm))
    print(summary(f"after SIGKILL {KILL_AFTER_SEC:g} s into a produce load of "
                  f"{KILL_LOAD_RATE} msg/s", sigkill))
    settings = " ".join(f"{k}={os.environ[k]}" for k in
                        ("GIB", "RUNS", "KILL_AFTER", "KILL_LOAD_RATE", "WARM", "SLUICE_BENCH_BROKER_ARGS")
                        if k in os.environ)
    print(f"\nCommand: `{settings + ' ' if settings else ''}python3 scripts/recovery_bench.py`")


if __name__ == "__main__":
    main()
