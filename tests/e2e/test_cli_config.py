"""Command line, config file, environment and graceful shutdown."""

import signal
import subprocess
import time

import pytest

import kafka_wire as kw
from conftest import confluent_consume_all, create_topic, free_port, sluice_bin, unique_topic


def run_serve_expect_fail(tmp_path, *args, env=None, timeout=20):
    import os
    e = dict(os.environ)
    e.update(env or {})
    cmd = [sluice_bin(), "serve", "--listen", f"127.0.0.1:{free_port()}",
           "--data-dir", str(tmp_path / "data")] + list(args)
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, env=e)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{cmd} did not exit within {timeout}s (expected a start-up error)")
    assert p.returncode != 0, f"{cmd} exited 0"
    return (p.stderr + p.stdout).decode(errors="replace")


def test_unknown_key_rejected(tmp_path):
    err = run_serve_expect_fail(tmp_path, "--set", "no.such.key=1")
    assert "no.such.key" in err, err


@pytest.mark.parametrize("kv,key", [
    ("num.partitions=abc", "num.partitions"),
    ("num.partitions=0", "num.partitions"),
    ("auto.create.topics.enable=maybe", "auto.create.topics.enable"),
    ("log.segment.bytes=-5", "log.segment.bytes"),
])
def test_bad_value_rejected(tmp_path, kv, key):
    err = run_serve_expect_fail(tmp_path, "--set", kv)
    assert key in err, err


def test_set_without_equals_rejected(tmp_path):
    err = run_serve_expect_fail(tmp_path, "--set", "num.partitions")
    assert "num.partitions" in err or "KEY=VALUE" in err.upper() or "=" in err, err


def test_bad_config_file_key_rejected(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('"no.such.setting" = 1\n')
    err = run_serve_expect_fail(tmp_path, "--config", str(cfg))
    assert "no.such.setting" in err, err


def test_help():
    p = subprocess.run([sluice_bin(), "serve", "--help"], capture_output=True, timeout=20)
    assert p.returncode == 0
    out = p.stdout.decode()
    for flag in ("--listen", "--advertise", "--data-dir", "--node-id", "--config", "--set"):
        assert flag in out, (flag, out)


def auto_created_partitions(b):
    topic = unique_topic("cfg")
    with b.conn() as c:
        t = kw.wait_for_topic(c, topic)
    return len(t["partitions"])


def test_config_file(make_broker, tmp_root):
    cfg = tmp_root / "sluice.toml"
    cfg.write_text('"num.partitions" = 5\n"auto.create.topics.enable" = true\n')
    b = make_broker(config_file=cfg)
    assert auto_created_partitions(b) == 5


def test_set_overrides_config_file(make_broker, tmp_root):
    cfg = tmp_root / "sluice.toml"
    cfg.write_text('"num.partitions" = 5\n')
    b = make_broker(config_file=cfg, settings={"num.partitions": 4})
    assert auto_created_partitions(b) == 4


def test_env_var(make_broker):
    b = make_broker(env={"SLUICE_NUM_PARTITIONS": "2"})
    assert auto_created_partitions(b) == 2


def test_advertise_and_node_id(make_broker):
    b = make_broker(extra_args=["--node-id", "7", "--advertise", "127.0.0.1:19999"], start=False)
    b.start()
    with b.conn() as c:
        md = kw.metadata_v1(c, [])
    assert md["brokers"] == [{"node_id": 7, "host": "127.0.0.1", "port": 19999, "rack": None}]
    assert md["controller"] == 7


def test_sigterm_graceful_and_restart(make_broker):
    b = make_broker(settings={"num.partitions": 2})
    topic = unique_topic("term")
    create_topic(b.bootstrap, topic, partitions=2)
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": b.bootstrap, "enable.idempotence": False, "acks": "1",
                  "linger.ms": 20})
    for i in range(500):
        p.produce(topic, key=str(i).encode(), value=f"v{i}".encode(), partition=i % 2)
    assert p.flush(30) == 0
    start = time.monotonic()
    b.stop()  # SIGTERM, exit code 0
    assert time.monotonic() - start < 30
    b.start()
    msgs = confluent_consume_all(b.bootstrap, topic, [0, 1], 500)
    got = sorted(int(m.value()[1:]) for m in msgs)
    assert got == list(range(500))
    for part in (0, 1):
        vals = [m.value() for m in msgs if m.partition() == part]
        assert vals == [f"v{i}".encode() for i in range(part, 500, 2)]
    # SIGINT (Ctrl-C) is graceful too
    rc = b.kill(signal.SIGINT)
    assert rc == 0, b.stderr_text()


def test_serve_with_no_flags(tmp_path):
    """`sluice serve` alone: 127.0.0.1:9092 and ./sluice-data in the cwd."""
    import os
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 9092))
        except OSError:
            pytest.skip("port 9092 is in use on this machine")
    env = dict(os.environ, NO_COLOR="1")
    for k in list(env):
        if k.startswith("SLUICE_") and k != "SLUICE_BIN":
            del env[k]
    log = open(tmp_path / "stderr.log", "wb")
    proc = subprocess.Popen([sluice_bin(), "serve"], cwd=tmp_path, stdout=log, stderr=log, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "stderr.log").read_text()
            try:
                with kw.Conn("127.0.0.1", 9092, timeout=2) as c:
                    err, apis = kw.api_versions_v0(c)
                    md = kw.metadata_v1(c, [])
                break
            except (OSError, kw.ConnectionClosed):
                assert time.monotonic() < deadline, (tmp_path / "stderr.log").read_text()
                time.sleep(0.1)
        assert err == 0
        assert md["brokers"] == [{"node_id": 1, "host": "127.0.0.1", "port": 9092, "rack": None}]
        assert (tmp_path / "sluice-data").is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_sigterm_with_parked_fetch(make_broker):
    """A long-poll fetch parked in the broker does not keep it from shutting
    down: SIGTERM answers the fetch at once (empty) and ends with exit code 0,
    rather than waiting out the fetch's 20 s max_wait_ms."""
    import threading

    b = make_broker()
    topic = unique_topic("park")
    create_topic(b.bootstrap, topic, partitions=1)
    conn = b.conn(timeout=40)
    outcome = {}

    def fetch():
        try:
            outcome["resp"] = kw.fetch_v4(conn, topic, 0, 0, max_wait_ms=20000, min_bytes=1)
        except Exception as e:  # closed connection is acceptable
            outcome["err"] = e

    t = threading.Thread(target=fetch, daemon=True)
    t.start()
    time.sleep(0.5)
    start = time.monotonic()
    rc = b.kill(signal.SIGTERM, timeout=35)
    took = time.monotonic() - start
    t.join(5)
    conn.close()
    assert rc == 0, b.stderr_text()
    assert outcome, "fetch neither answered nor closed"
    if "resp" in outcome:
        assert outcome["resp"]["decoded"] == []
    assert took < 15, f"shutdown waited {took:.1f}s: the parked fetch was not released"
