#!/usr/bin/env python3
"""Reproduces the numbers of BENCHMARKS.md on this machine.

    python3 scripts/bench.py                # full matrix, 3 runs of 10 s each
    RUNS=1 DURATION=3 python3 scripts/bench.py --quick   # a smoke run

It builds the release binary, measures the machine's limits (disk write with fdatasync and
page-cache read with dd, loopback TCP with iperf3), starts a release `sluice serve` on a
temporary data directory and drives it with `sluice bench` (the client runs on the same
machine). It prints a Markdown report on stdout: medians of RUNS runs, each throughput also
as a share of the measured limits, broker CPU seconds per GiB ingested (from
/proc/<pid>/stat), and broker resident memory idle and under load (VmRSS).

Only the standard library is used. Needs: cargo, dd, iperf3 (apt-get install iperf3).
"""

import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = int(os.environ.get("RUNS", "3"))
DURATION_SEC = int(os.environ.get("DURATION", "10"))
QUICK = "--quick" in sys.argv
EXTRA_BROKER_ARGS = os.environ.get("SLUICE_BENCH_BROKER_ARGS", "").split()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024
GIB = 1024 * MIB


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run(args, **kwargs):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- machine ------------------------------------------------------------------------


def dd_rate_mb(stderr):
    """Parses dd's summary line into MB/s (decimal)."""
    match = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", stderr)
    if not match:
        raise RuntimeError(f"cannot parse dd output: {stderr}")
    return int(match.group(1)) / float(match.group(2)) / 1e6


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds():
    """CPU seconds all cores spent busy (not idle, not waiting for I/O) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def measure_machine(work):
    path = work / "dd.bin"
    count_mib = 256 if QUICK else 2048
    writes, reads, cache_writes, cache_write_cpu = [], [], [], []
    for _ in range(RUNS):
        out = run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={count_mib}",
                   "conv=fdatasync"])
        writes.append(dd_rate_mb(out.stderr))
        out = run(["dd", f"if={path}", "of=/dev/null", "bs=1M"])
        reads.append(dd_rate_mb(out.stderr))
        path.unlink()
        # Writing into page-cache pages the kernel has not used for a while: what every
        # append costs the broker before any fsync (on a VM whose free memory goes back to
        # the host, first touches of such pages are slow).
        time.sleep(2)
        cpu_before = children_cpu_seconds()
        out = run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={count_mib}"])
        cache_write_cpu.append((children_cpu_seconds() - cpu_before) / (count_mib / 1024))
        cache_writes.append(dd_rate_mb(out.stderr))
        path.unlink()
    loopback = []
    port = free_port()
    server = subprocess.Popen(["iperf3", "-s", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        for _ in range(RUNS):
            out = run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t",
                       str(3 if QUICK else 5), "-J"])
            report = json.loads(out.stdout)
            loopback.append(report["end"]["sum_received"]["bits_per_second"] / 8 / 1e6)
    finally:
        server.terminate()
        server.wait()
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return {
        "nproc": os.cpu_count(),
        "memory_gib": mem_kib / 1024 / 1024,
        "cpu": cpu_model(),
        "disk_write_fdatasync_mb_s": statistics.median(writes),
        "page_cache_read_mb_s": statistics.median(reads),
        "page_cache_write_mb_s": statistics.median(cache_writes),
        "page_cache_write_cpu_sec_per_gib": statistics.median(cache_write_cpu),
        "loopback_mb_s": statistics.median(loopback),
    }


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


# ---- broker -------------------------------------------------------------------------


class Broker:
    def __init__(self, binary, work, extra_args, data=None):
        self.port = free_port()
        self.data = data or work / f"data-{self.port}"
        self.log_path = work / f"broker-{self.port}.log"
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir",
             str(self.data), *extra_args],
            stdout=self.log, stderr=self.log)
        started = time.monotonic()
        # Generous: a restart over the matrix's gigabytes recovers the logs first.
        deadline = started + 600
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    self.start_sec = time.monotonic() - started
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"broker did not start; see {self.log_path}")

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self):
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_bytes(self):
        pages = int(Path(f"/proc/{self.process.pid}/statm").read_text().split()[1])
        return pages * PAGE_BYTES

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class RssSampler:
    """Samples the broker's resident memory every 200 ms while a run is going."""

    def __init__(self, broker):
        self.broker = broker
        self.peak = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop_event.is_set():
            try:
                self.peak = max(self.peak, self.broker.rss_bytes())
            except OSError:
                return
            time.sleep(0.2)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()


def bench(binary, mode, broker, **options):
    args = [binary, "bench", mode, "-b", broker.bootstrap, "--json"]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    out = run(args)
    return json.loads(out.stdout)


# ---- the matrix ---------------------------------------------------------------------


def measured_produce(binary, broker, **options):
    """One produce run with the broker's CPU and the whole machine's (client, broker and
    kernel threads such as writeback) per GiB ingested."""
    cpu_before, busy_before = broker.cpu_seconds(), machine_busy_seconds()
    result = bench(binary, "produce", broker, duration=DURATION_SEC, **options)
    gib = max(result["bytes"], 1) / GIB
    result["broker_cpu_sec_per_gib"] = (broker.cpu_seconds() - cpu_before) / gib
    result["machine_cpu_sec_per_gib"] = (machine_busy_seconds() - busy_before) / gib
    return result


# How acks=all throughput moves with what is in flight and how commits reach the disk:
# (label, extra broker arguments, extra bench options).
ACKS_ALL_VARIANTS = [
    ("default (`log.flush.method=fdatasync`), 1 producer", [], {}),
    ("`log.flush.method=syncfs`, 1 producer", ["--set", "log.flush.method=syncfs"], {}),
    ("default, `--producers 2`", [], {"producers": 2}),
    ("`log.flush.method=syncfs`, `--producers 2`", ["--set", "log.flush.method=syncfs"],
     {"producers": 2}),
]


def acks_all_variants(binary, work):
    """1 KiB, acks=all, 8 partitions, on a fresh broker per variant."""
    rows = []
    for label, broker_args, options in ACKS_ALL_VARIANTS:
        broker = Broker(binary, work, EXTRA_BROKER_ARGS + broker_args)
        try:
            runs = []
            for run_index in range(RUNS):
                result = measured_produce(binary, broker, topic=f"variant-{run_index}",
                                          partitions=8, message_bytes=1024, acks="all",
                                          **options)
                runs.append(result)
                log(f"acks=all {label}: {result['mb_per_sec']:.1f} MB/s")
            rows.append(summarise(runs, label=label))
        finally:
            broker.stop()
            shutil.rmtree(broker.data, ignore_errors=True)
    return rows


def produce_matrix(binary, broker):
    rows = []
    peak_rss = 0
    for message_bytes in (100, 1024):
        for acks in ("1", "all"):
            for partitions in (1, 8):
                runs = []
                for run_index in range(RUNS):
                    topic = f"produce-{message_bytes}-{acks}-{partitions}-{run_index}"
                    with RssSampler(broker) as sampler:
                        result = measured_produce(binary, broker, topic=topic,
                                                  partitions=partitions,
                                                  message_bytes=message_bytes, acks=acks)
                    peak_rss = max(peak_rss, sampler.peak)
                    runs.append(result)
                    log(f"produce {message_bytes} B acks={acks} p={partitions}: "
                        f"{result['mb_per_sec']:.1f} MB/s")
                rows.append(summarise(runs, message_bytes=message_bytes, acks=acks,
                                      partitions=partitions))
    return rows, peak_rss


def consume_matrix(binary, broker):
    rows = []
    for message_bytes in (100, 1024):
        # Read back what one produce run of the matrix left (8 partitions, acks=1).
        topic = f"produce-{message_bytes}-1-8-0"
        runs = []
        for _ in range(RUNS):
            result = bench(binary, "consume", broker, topic=topic)
            runs.append(result)
            log(f"consume {message_bytes} B: {result['mb_per_sec']:.1f} MB/s")
        rows.append(summarise(runs, message_bytes=message_bytes, partitions=8))
    return rows


def e2e_matrix(binary, broker):
    rows = []
    message_bytes = 1024
    rate = int(50e6 / message_bytes)
    for acks in ("1", "all"):
        runs = []
        for run_index in range(RUNS):
            result = bench(binary, "e2e", broker, topic=f"e2e-{acks}-{run_index}",
                           partitions=8, message_bytes=message_bytes, acks=acks, rate=rate,
                           duration=DURATION_SEC)
            runs.append(result)
            log(f"e2e acks={acks}: p99 {result['latency']['p99_ms']} ms")
        rows.append(summarise(runs, message_bytes=message_bytes, acks=acks, partitions=8,
                              rate=rate))
    return rows


def summarise(runs, **labels):
    def median(get):
        return statistics.median(get(r) for r in runs)

    summary = dict(labels)
    summary["runs"] = len(runs)
    summary["msgs_per_sec"] = median(lambda r: r["msgs_per_sec"])
    summary["mb_per_sec"] = median(lambda r: r["mb_per_sec"])
    for key in ("p50_ms", "p99_ms", "p999_ms", "max_ms"):
        summary[key] = median(lambda r, key=key: r["latency"][key])
    for key in ("broker_cpu_sec_per_gib", "machine_cpu_sec_per_gib"):
        if key in runs[0]:
            summary[key] = median(lambda r, key=key: r[key])
    summary["errors"] = sum(r.get("errors", 0) for r in runs)
    return summary


# ---- report -------------------------------------------------------------------------


def report(machine, produce_rows, variant_rows, consume_rows, pread_rows, e2e_rows, idle_rss,
           peak_rss, commit):
    disk = machine["disk_write_fdatasync_mb_s"]
    loopback = machine["loopback_mb_s"]
    lines = [
        f"Commit `{commit}`, {time.strftime('%Y-%m-%d')}; medians of {RUNS} runs of "
        f"{DURATION_SEC} s; client and broker on the same machine.",
        "",
        "| machine | value |",
        "| --- | --- |",
        f"| CPU | {machine['cpu']}, `nproc` = {machine['nproc']} |",
        f"| memory | {machine['memory_gib']:.1f} GiB |",
        f"| disk write, `dd bs=1M conv=fdatasync` | {disk:.0f} MB/s |",
        f"| page-cache read, `dd bs=1M` | {machine['page_cache_read_mb_s']:.0f} MB/s |",
        f"| page-cache write, `dd bs=1M` (no sync) | {machine['page_cache_write_mb_s']:.0f} MB/s, "
        f"{machine['page_cache_write_cpu_sec_per_gib']:.2f} CPU s/GiB |",
        f"| loopback TCP, `iperf3 -c 127.0.0.1` | {loopback:.0f} MB/s |",
        "",
        "Producer throughput (`sluice bench produce --duration "
        f"{DURATION_SEC}`; latency = send to acknowledgement):",
        "",
        "| message | acks | partitions | msgs/s | MB/s | of disk | of loopback | p50 ms | p99 ms "
        "| p99.9 ms | max ms | broker CPU s/GiB | machine CPU s/GiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in produce_rows:
        lines.append(
            f"| {row['message_bytes']} B | {row['acks']} | {row['partitions']} | "
            f"{row['msgs_per_sec']:,.0f} | {row['mb_per_sec']:.1f} | "
            f"{row['mb_per_sec'] / disk:.0%} | {row['mb_per_sec'] / loopback:.0%} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['p999_ms']:.2f} | "
            f"{row['max_ms']:.2f} | {row['broker_cpu_sec_per_gib']:.2f} | "
            f"{row['machine_cpu_sec_per_gib']:.2f} |")
    lines += [
        "",
        "acks=all, 1 KiB, 8 partitions: what is in flight and how commits reach the disk "
        "(a fresh broker per variant):",
        "",
        "| variant | MB/s | of disk | p50 ms | p99 ms | broker CPU s/GiB | machine CPU s/GiB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in variant_rows:
        lines.append(
            f"| {row['label']} | {row['mb_per_sec']:.1f} | {row['mb_per_sec'] / disk:.0%} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['broker_cpu_sec_per_gib']:.2f} | "
            f"{row['machine_cpu_sec_per_gib']:.2f} |")
    lines += [
        "",
        "Consumer throughput from the page cache (`sluice bench consume` of a produce run's "
        "topic, 8 partitions):",
        "",
        "| message | msgs/s | MB/s | of loopback | pread baseline MB/s | sendfile / pread |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row, base in zip(consume_rows, pread_rows):
        lines.append(f"| {row['message_bytes']} B | {row['msgs_per_sec']:,.0f} | "
                     f"{row['mb_per_sec']:.1f} | {row['mb_per_sec'] / loopback:.0%} | "
                     f"{base['mb_per_sec']:.1f} | {row['mb_per_sec'] / base['mb_per_sec']:.2f} |")
    lines += [
        "",
        "End-to-end latency at a fixed 50 MB/s (`sluice bench e2e --rate "
        f"{e2e_rows[0]['rate']}`, 1 KiB, 8 partitions; producer timestamp to consumer "
        "receipt, coordinated-omission corrected):",
        "",
        "| acks | msgs/s | p50 ms | p99 ms | p99.9 ms | max ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in e2e_rows:
        lines.append(f"| {row['acks']} | {row['msgs_per_sec']:,.0f} | {row['p50_ms']:.2f} | "
                     f"{row['p99_ms']:.2f} | {row['p999_ms']:.2f} | {row['max_ms']:.2f} |")
    lines += [
        "",
        f"Broker resident memory: idle {idle_rss / MIB:.1f} MiB, peak during the produce "
        f"matrix {peak_rss / MIB:.1f} MiB.",
    ]
    errors = sum(r["errors"] for r in produce_rows + variant_rows + consume_rows + pread_rows + e2e_rows)
    if errors:
        lines.append(f"\n**{errors} request errors during the runs: see the broker log.**")
    return "\n".join(lines)


def main():
    for tool in ("cargo", "dd", "iperf3"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed (apt-get install iperf3 for iperf3)")
    log("building the release binary")
    subprocess.run(["cargo", "build", "--release", "-p", "sluice"], cwd=ROOT, check=True)
    binary = str(ROOT / "target" / "release" / "sluice")
    commit = run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="sluice-bench-", dir=os.environ.get("BENCH_DIR")))
    try:
        log("measuring the machine")
        machine = measure_machine(work)
        broker = Broker(binary, work, EXTRA_BROKER_ARGS)
        try:
            time.sleep(2)
            idle_rss = broker.rss_bytes()
            produce_rows, peak_rss = produce_matrix(binary, broker)
            consume_rows = consume_matrix(binary, broker)
            e2e_rows = e2e_matrix(binary, broker)
        finally:
            broker.stop()
        # Baseline: the same reads with sendfile off (pread into memory, then write).
        log("consume baseline with socket.sendfile.enable=false")
        pread_broker = Broker(binary, work, EXTRA_BROKER_ARGS +
                              ["--set", "socket.sendfile.enable=false"], data=broker.data)
        log(f"restart over the matrix's data took {pread_broker.start_sec:.1f} s")
        try:
            pread_rows = consume_matrix(binary, pread_broker)
        finally:
            pread_broker.stop()
        variant_rows = acks_all_variants(binary, work)
        print(report(machine, produce_rows, variant_rows, consume_rows, pread_rows, e2e_rows,
                     idle_rss, peak_rss, commit))
        print("\n<!-- raw: " + json.dumps({"machine": machine, "produce": produce_rows,
                                           "acks_all_variants": variant_rows,
                                           "consume": consume_rows, "consume_pread": pread_rows,
                                           "e2e": e2e_rows}) + " -->")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
