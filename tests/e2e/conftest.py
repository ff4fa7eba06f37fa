"""Shared fixtures for Sluice end-to-end tests.

Every test gets real `sluice serve` processes on free ports with temporary
data directories. See README.md in this directory.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kafka_wire as kw  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = float(os.environ.get("SLUICE_START_TIMEOUT", "30"))


def sluice_bin() -> str:
    env = os.environ.get("SLUICE_BIN")
    if env:
        return env
    return str(REPO_ROOT / "target" / "debug" / "sluice")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique_topic(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Broker:
    """A `sluice serve` child process on 127.0.0.1:<port>."""

    def __init__(self, data_dir: Path, settings=None, extra_args=None, env=None,
                 config_file=None, port=None, host="127.0.0.1", command_prefix=None):
        self.data_dir = Path(data_dir)
        self.host = host
        # Run through e.g. `ip netns exec NS` (a broker in its own network namespace).
        self.command_prefix = list(command_prefix or [])
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.extra_args = list(extra_args or [])
        self.env = dict(env or {})
        self.config_file = config_file
        self.proc = None
        self.generation = 0
        self.stderr_path = None
        self._stderr_file = None

    # ---- process control -------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def args(self):
        a = self.command_prefix + [sluice_bin(), "serve", "--listen", self.bootstrap, "--data-dir", str(self.data_dir)]
        if self.config_file:
            a += ["--config", str(self.config_file)]
        for k, v in self.settings.items():
            a += ["--set", f"{k}={v}"]
        return a + self.extra_args

    def start(self, wait=True):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.generation += 1
        # Keep the log outside the data dir proper so the broker never sees a
        # foreign file in it; still "in" the test's temp dir.
        self.stderr_path = self.data_dir.parent / f"{self.data_dir.name}-stderr-{self.generation}.log"
        self._stderr_file = open(self.stderr_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")
        env.update(self.env)
        self.proc = subprocess.Popen(
            self.args(), stdin=subprocess.DEVNULL, stdout=self._stderr_file,
            stderr=self._stderr_file, env=env, cwd=str(self.data_dir.parent),
        )
        if wait:
            self.wait_ready()
        return self

    def stderr_text(self, all_generations=False) -> str:
        paths = [self.stderr_path] if not all_generations else sorted(
            self.data_dir.parent.glob(f"{self.data_dir.name}-stderr-*.log"))
        out = []
        for p in paths:
            if p and p.exists():
                out.append(p.read_text(errors="replace"))
        text = "\n".join(out)
        if len(text) > 20000:
            text = "...(truncated)...\n" + text[-20000:]
        return text

    def wait_ready(self, timeout=START_TIMEOUT):
        deadline = time.monotonic() + timeout
        last_err = None
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(
                    f"sluice exited with {rc} during start-up; args={self.args()}\n"
                    f"--- stderr ---\n{self.stderr_text()}")
            try:
                with kw.Conn(self.host, self.port, timeout=2.0) as c:
                    err, apis = kw.api_versions_v0(c)
                    if err == 0 and apis:
                        return
                    last_err = f"ApiVersions error {err}, apis={apis}"
            except (OSError, kw.ConnectionClosed, ValueError, AssertionError) as e:
                last_err = repr(e)
            time.sleep(0.1)
        raise AssertionError(
            f"sluice not ready after {timeout}s (last error: {last_err}); args={self.args()}\n"
            f"--- stderr ---\n{self.stderr_text()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL, timeout=30):
        """Send a signal and wait for the process to exit; returns exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"sluice did not exit within {timeout}s after signal {sig}\n"
                f"--- stderr ---\n{self.stderr_text()}")
        finally:
            if self._stderr_file:
                self._stderr_file.close()
                self._stderr_file = None
        return rc

    def stop(self, timeout=30):
        """Graceful shutdown: SIGTERM, wait, assert exit code 0."""
        rc = self.kill(signal.SIGTERM, timeout=timeout)
        assert rc == 0, f"sluice exited with {rc} after SIGTERM\n--- stderr ---\n{self.stderr_text()}"
        return rc

    def restart(self, sig=None):
        """Restart on the same port and data dir. If still running, stop it
        first (SIGTERM, or the given signal)."""
        if self.alive():
            if sig is None:
                self.stop()
            else:
                self.kill(sig)
        return self.start()

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.kill()
                self.proc.wait(timeout=10)
            except Exception:
                pass
        if self._stderr_file:
            self._stderr_file.close()
            self._stderr_file = None

    def assert_alive(self):
        assert self.alive(), (
            f"sluice died (rc={self.proc.poll()})\n--- stderr ---\n{self.stderr_text()}")

    # ---- convenience -----------------------------------------------------

    def conn(self, timeout=10.0) -> "kw.Conn":
        return kw.Conn(self.host, self.port, timeout=timeout)

    def __repr__(self):
        return f"<Broker {self.bootstrap} dir={self.data_dir}>"


@pytest.fixture
def tmp_root():
    d = Path(tempfile.mkdtemp(prefix="sluice-e2e-"))
    yield d
    if os.environ.get("SLUICE_KEEP_DATA"):
        print(f"keeping test data in {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_broker(tmp_root, request):
    """Factory: make_broker(settings={...}, start=True, **Broker kwargs)."""
    brokers = []

    def factory(settings=None, start=True, name=None, **kwargs):
        name = name or f"broker{len(brokers)}"
        b = Broker(tmp_root / name / "data", settings=settings, **kwargs)
        (tmp_root / name).mkdir(parents=True, exist_ok=True)
        brokers.append(b)
        if start:
            b.start()
        return b

    yield factory
    failed = getattr(request.node, "rep_call", None)
    for b in brokers:
        if failed is not None and failed.failed and b.stderr_path:
            sys.stderr.write(f"\n--- {b!r} stderr ---\n{b.stderr_text(all_generations=True)}\n")
        b.cleanup()


@pytest.fixture
def broker(make_broker):
    """A running broker with default settings (auto topic creation on,
    num.partitions=3)."""
    return make_broker(settings={"num.partitions": 3})


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# ---- shared client helpers -------------------------------------------------


def create_topic(bootstrap, name, partitions=1, config=None, timeout=30):
    """Create a topic with confluent-kafka's AdminClient and wait until all
    partitions have leaders in metadata."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futs = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})],
        operation_timeout=timeout)
    futs[name].result(timeout=timeout)
    wait_topic_partitions(bootstrap, name, partitions, timeout=timeout)


def wait_topic_partitions(bootstrap, name, partitions, timeout=30):
    host, port = bootstrap.split(":")
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with kw.Conn(host, int(port)) as c:
            md = kw.metadata_v1(c, [name])
        last = md
        for t in md["topics"]:
            if (t["name"] == name and t["error_code"] == 0 and len(t["partitions"]) == partitions
                    and all(p["leader"] >= 0 for p in t["partitions"])):
                return t
        time.sleep(0.1)
    raise AssertionError(f"topic {name} not ready with {partitions} partitions: {last}")


def confluent_consume_all(bootstrap, topic, partitions, expected, timeout=60, start_offset=0,
                          extra_conf=None, check_no_extra=True):
    """Consume `expected` messages from the given partitions (list of ints)
    with confluent-kafka assign() at explicit offsets. Returns list of Message."""
    from confluent_kafka import Consumer, TopicPartition

    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": "sluice-e2e-unused",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "error",
        "enable.partition.eof": False,
    }
    conf.update(extra_conf or {})
    c = Consumer(conf)
    try:
        c.assign([TopicPartition(topic, p, start_offset) for p in partitions])
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                raise AssertionError(f"consume error: {m.error()}")
            out.append(m)
        assert len(out) == expected, f"consumed {len(out)} of {expected} from {topic}"
        # make sure nothing extra shows up
        extra = c.poll(0.5) if check_no_extra else None
        assert extra is None or extra.error() is not None, (
            f"unexpected extra message at {extra.partition()}/{extra.offset()}")
        return out
    finally:
        c.close()
