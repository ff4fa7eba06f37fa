"""`sluice verify`: the crash-loop verifier.

A short real run (SIGKILL/SIGSTOP rounds against a `sluice serve` child, small segments)
must come out clean with consistent counts; and the checker must fail loudly when the
log lost acknowledged records: a run's data directory is damaged (a segment truncated)
and `--check-only` re-checks it against the run's saved history.
"""

import json
import os
import subprocess
from pathlib import Path

from conftest import sluice_bin

# Exit code of a run that found a violation (documented in `sluice verify --help`).
EXIT_VIOLATION = 5
RUN_TIMEOUT_S = 300


def verify(*args, timeout=RUN_TIMEOUT_S):
    return subprocess.run(
        [sluice_bin(), "verify", *args],
        capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, NO_COLOR="1"),
    )


def summary(proc):
    assert proc.stdout.strip(), f"no JSON on stdout\n--- stderr ---\n{proc.stderr}"
    return json.loads(proc.stdout)


def short_run_args(data_dir, *extra):
    return [
        "--rounds", "5", "--seed", "42", "--rate", "300",
        "--min-uptime-ms", "300", "--max-uptime-ms", "1200",
        "--max-stop-ms", "1000", "--stop-ratio", "0.4",
        "--data-dir", str(data_dir), *extra,
    ]


def test_short_crash_loop_is_clean_with_consistent_counts(tmp_root):
    data_dir = tmp_root / "run"
    proc = verify(*short_run_args(data_dir, "--broker-arg", "log.segment.bytes=16384",
                                  "-o", "json"))
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    s = summary(proc)
    assert s["clean"] is True and s["violations"] == 0
    assert s["rounds"] == 5
    assert s["sigkills"] + s["sigstops"] == s["rounds"]
    assert s["seed"] == 42
    assert s["acked"] > 0
    assert s["lost"] == 0 and s["duplicated"] == 0
    assert s["out_of_order"] == 0 and s["phantom"] == 0
    assert s["commit_regressions"] == 0 and s["commits_beyond_high_watermark"] == 0
    # Everything acknowledged was read back; nothing beyond what was sent.
    assert s["acked"] <= s["records_read"] <= s["sent"]
    assert s["acked"] + s["failed"] <= s["sent"]
    # The group committed during the run and its offsets were fetched after each
    # restart, after the load and after the final restart.
    assert s["commits"] > 0
    assert s["observations"] == s["sigkills"] + 2
    # Small segments: the run rolled segments (and recovered across them).
    topic_dirs = [d for d in (data_dir / "log").iterdir() if d.name.startswith(s["topic"])]
    assert len(topic_dirs) == 4
    assert max(len(list(d.glob("*.log"))) for d in topic_dirs) > 1
    # Per-round lines and the seed go to stderr.
    assert "round 5/5" in proc.stderr and "seed 42" in proc.stderr


def test_table_output_and_clean_exit(tmp_root):
    proc = verify("--rounds", "2", "--rate", "200", "--max-uptime-ms", "600",
                  "--max-stop-ms", "500", "--data-dir", str(tmp_root / "run"))
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "COUNT"]
    rows = {" ".join(line.split()[:-1]): line.split()[-1] for line in lines[1:] if line.strip()
            and not line.startswith("OK")}
    for name in ["rounds", "sigkills", "sigstops", "sent", "acked", "failed deliveries",
                 "records read", "lost", "duplicated", "out of order", "phantom",
                 "commit regressions"]:
        assert name in rows, f"row {name!r} missing in\n{proc.stdout}"
    assert rows["rounds"] == "2"
    assert int(rows["sigkills"]) + int(rows["sigstops"]) == 2
    assert rows["lost"] == "0" and rows["duplicated"] == "0" and rows["phantom"] == "0"
    assert any(line.startswith("OK: no violation") for line in lines)


def largest_partition_log(data_dir: Path, topic: str) -> Path:
    logs = [f for d in (data_dir / "log").iterdir() if d.name.startswith(topic + "-")
            for f in d.glob("*.log")]
    return max(logs, key=lambda f: f.stat().st_size)


def test_check_only_fails_loudly_on_a_truncated_segment(tmp_root):
    data_dir = tmp_root / "run"
    history = tmp_root / "history.jsonl"
    # One segment per partition (default segment size), so truncating it removes the
    # tail of the partition.
    proc = verify("--rounds", "2", "--rate", "300", "--stop-ratio", "0",
                  "--max-uptime-ms", "800", "--data-dir", str(data_dir),
                  "--history", str(history), "-o", "json")
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    run = summary(proc)
    assert run["acked"] > 0 and history.exists()

    # Re-checking the intact log passes: a later failure is the damage's doing.
    proc = verify("--check-only", "--data-dir", str(data_dir), "--history", str(history),
                  "-o", "json")
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    again = summary(proc)
    assert again["clean"] is True and again["check_only"] is True
    assert again["acked"] == run["acked"] and again["records_read"] == run["records_read"]

    # Cut the largest segment of the topic in half.
    segment = largest_partition_log(data_dir, run["topic"])
    size = segment.stat().st_size
    with open(segment, "r+b") as f:
        f.truncate(size // 2)

    proc = verify("--check-only", "--data-dir", str(data_dir), "--history", str(history),
                  "-o", "json")
    assert proc.returncode == EXIT_VIOLATION, (
        f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    damaged = summary(proc)
    assert damaged["clean"] is False
    assert damaged["lost"] > 0
    assert damaged["records_read"] < run["records_read"]
    assert damaged["violations"] >= damaged["lost"]
    assert damaged["first_violations"], damaged
    assert damaged["first_violations"][0]["kind"] == "lost"
    assert "violation(s) found" in proc.stderr and str(data_dir) in proc.stderr

    # Same in table form: the violations are listed.
    proc = verify("--check-only", "--data-dir", str(data_dir), "--history", str(history))
    assert proc.returncode == EXIT_VIOLATION
    assert "FAILED:" in proc.stdout and "lost: producer" in proc.stdout


def test_check_only_needs_history_and_data_dir(tmp_root):
    proc = verify("--check-only", "--data-dir", str(tmp_root), timeout=30)
    assert proc.returncode == 2
    assert "--history" in proc.stderr


def test_partitions_without_records_are_checked_too(tmp_root):
    # One key: every record goes to one partition, the other three stay empty (a run with
    # 8 partitions and 64 keys leaves partition 7 empty too). The read-back must still
    # position them and finish.
    proc = verify("--rounds", "1", "--keys", "1", "--partitions", "4", "--stop-ratio", "0",
                  "--max-uptime-ms", "500", "--rate", "200",
                  "--data-dir", str(tmp_root / "run"), "-o", "json")
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    s = summary(proc)
    assert s["clean"] is True and s["acked"] > 0 and s["records_read"] == s["acked"]


def test_check_only_catches_lost_offset_commits(tmp_root):
    data_dir = tmp_root / "run"
    history = tmp_root / "history.jsonl"
    proc = verify("--rounds", "2", "--rate", "300", "--stop-ratio", "0",
                  "--max-uptime-ms", "800", "--data-dir", str(data_dir),
                  "--history", str(history), "-o", "json")
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    run = summary(proc)
    assert run["commits"] > 0
    # The group's commits live in one __consumer_offsets partition: cut its log in half,
    # so the broker reloads older commits than it acknowledged.
    offsets_logs = [f for d in (data_dir / "log").iterdir()
                    if d.name.startswith("__consumer_offsets-") for f in d.glob("*.log")]
    largest = max(offsets_logs, key=lambda f: f.stat().st_size)
    assert largest.stat().st_size > 0
    with open(largest, "r+b") as f:
        f.truncate(largest.stat().st_size // 2)

    proc = verify("--check-only", "--data-dir", str(data_dir), "--history", str(history),
                  "-o", "json")
    assert proc.returncode == EXIT_VIOLATION, (
        f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    damaged = summary(proc)
    assert damaged["commit_regressions"] > 0
    assert damaged["lost"] == 0, "the topic itself was not damaged"
    assert any(v["kind"] == "commit_regression" for v in damaged["first_violations"])


def test_cluster_crash_loop_is_clean_and_reports_the_cluster(tmp_root):
    # Three brokers as one cluster (RF 3, min.insync.replicas 2 by default); each round
    # SIGKILLs or SIGSTOPs one of them, then waits for full ISRs again.
    data_dir = tmp_root / "run"
    history = tmp_root / "history.jsonl"
    proc = verify("--brokers", "3", "--rounds", "4", "--seed", "11", "--rate", "100",
                  "--max-uptime-ms", "1000", "--max-stop-ms", "1000", "--stop-ratio", "0.3",
                  "--data-dir", str(data_dir), "--history", str(history), "-o", "json")
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    s = summary(proc)
    assert s["clean"] is True and s["violations"] == 0
    assert s["brokers"] == 3 and s["rounds"] == 4
    assert s["replication_factor"] == 3 and s["min_insync_replicas"] == 2
    assert s["sigkills"] + s["sigstops"] == 4
    assert sum(s["sigkills_by_broker"].values()) == s["sigkills"]
    assert sum(s["sigstops_by_broker"].values()) == s["sigstops"]
    assert set(s["sigkills_by_broker"]) | set(s["sigstops_by_broker"]) <= {"1", "2", "3"}
    assert s["acked"] > 0 and s["acked"] <= s["records_read"] <= s["sent"]
    assert s["lost"] == 0 and s["duplicated"] == 0
    assert s["out_of_order"] == 0 and s["phantom"] == 0
    assert s["commits"] > 0 and s["commit_regressions"] == 0
    # One data directory and output file per node, and the layout for --check-only.
    for node in (1, 2, 3):
        assert (data_dir / f"node-{node}").is_dir()
        assert (data_dir / f"broker-{node}.log").stat().st_size > 0
    layout = json.loads((data_dir / "cluster.json").read_text())
    assert [n["node_id"] for n in layout["nodes"]] == [1, 2, 3]
    assert layout["replication_factor"] == 3
    # Every node holds a replica of each partition of the topic.
    for node in (1, 2, 3):
        dirs = [d for d in (data_dir / f"node-{node}").rglob(s["topic"] + "-*") if d.is_dir()]
        assert len({d.name for d in dirs}) == 4, (node, dirs)
    assert "round 4/4" in proc.stderr and " broker " in proc.stderr

    # The kept cluster re-checks clean.
    proc = verify("--check-only", "--data-dir", str(data_dir), "--history", str(history),
                  "-o", "json")
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    again = summary(proc)
    assert again["check_only"] is True and again["clean"] is True
    assert again["brokers"] == 3
    assert again["acked"] == s["acked"] and again["records_read"] == s["records_read"]


def test_cluster_options_are_checked(tmp_root):
    proc = verify("--brokers", "2", "--replication-factor", "3",
                  "--data-dir", str(tmp_root / "run"), timeout=30)
    assert proc.returncode == 1
    assert "--replication-factor 3" in proc.stderr
    proc = verify("--brokers", "3", "--min-insync-replicas", "3", "--replication-factor", "2",
                  "--data-dir", str(tmp_root / "run2"), timeout=30)
    assert proc.returncode == 1
    assert "above the replication factor" in proc.stderr
