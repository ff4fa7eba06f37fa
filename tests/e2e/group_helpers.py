"""Helpers for the consumer-group end-to-end tests (test_groups_*.py).

* `GroupConsumerProc`: a group consumer (confluent-kafka or kafka-python) in
  its own Python subprocess, so that a test can SIGKILL it. The child prints
  one JSON object per line on stdout (assignments, revocations, consumed
  messages, commits); a reader thread collects them.
* Wire codecs for the group APIs (FindCoordinator, JoinGroup, SyncGroup,
  Heartbeat, LeaveGroup, OffsetFetch), built on kafka_wire.py.
* Small producer helpers.
"""

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import kafka_wire as kw
from kafka_wire import array, i8, i16, i32, i64, nbytes, string

# Fast group settings for the broker and the clients.
BROKER_GROUP_SETTINGS = {"group.initial.rebalance.delay.ms": 200}
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_MS = 500


_SUPPORTED = {}


def _setting_supported(key, value):
    """Does the broker binary accept `--set key=value`? (Starts it briefly on
    a free port; an unknown key makes it exit at once naming the key.)"""
    if key in _SUPPORTED:
        return _SUPPORTED[key]
    from conftest import free_port, sluice_bin

    with tempfile.TemporaryDirectory(prefix="sluice-probe-") as d:
        proc = subprocess.Popen(
            [sluice_bin(), "serve", "--listen", f"127.0.0.1:{free_port()}",
             "--data-dir", str(Path(d) / "data"), "--set", f"{key}={value}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=1.5)
            ok = key not in out.decode(errors="replace")
        except subprocess.TimeoutExpired:
            ok = True  # still running: accepted
            proc.kill()
            proc.communicate()
    _SUPPORTED[key] = ok
    return ok


def group_broker_settings(**extra):
    """Broker settings for group tests: a short initial rebalance delay when
    the broker supports the setting."""
    s = {"num.partitions": 3}
    for k, v in BROKER_GROUP_SETTINGS.items():
        if _setting_supported(k, v):
            s[k] = v
    s.update(extra)
    return s


# ---------------------------------------------------------------------------
# Producing
# ---------------------------------------------------------------------------


def confluent_produce_keyed(bootstrap, topic, n, start=0, prefix="k"):
    """Produce n keyed messages key=f"{prefix}-{i%50}" value=f"v-{i}".
    Returns {(partition, offset): (key, value)}."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False,
                  "acks": "all", "linger.ms": 5, "message.timeout.ms": 30000})
    out = {}
    errors = []

    def cb(err, msg):
        if err is not None:
            errors.append(err)
        else:
            out[(msg.partition(), msg.offset())] = (msg.key().decode(), msg.value().decode())

    for i in range(start, start + n):
        while True:
            try:
                p.produce(topic, key=f"{prefix}-{i % 50}".encode(), value=f"v-{i}".encode(),
                          on_delivery=cb)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    remaining = p.flush(60)
    assert remaining == 0, f"{remaining} messages not delivered"
    assert not errors, f"delivery errors: {errors[:5]}"
    assert len(out) == n, f"{len(out)} delivery reports for {n} messages"
    return out


def end_offsets(produced, partitions):
    """{partition: next offset} from a produced map."""
    ends = {p: 0 for p in partitions}
    for (p, o) in produced:
        ends[p] = max(ends[p], o + 1)
    return ends


# ---------------------------------------------------------------------------
# Consumer subprocesses
# ---------------------------------------------------------------------------

_CONFLUENT_CHILD = r'''
import json, sys, time
from confluent_kafka import Consumer, KafkaException, TopicPartition
import select

cfg = json.loads(sys.argv[1])

def emit(**ev):
    ev["t"] = time.time()
    sys.stdout.write(json.dumps(ev) + "\n")
    sys.stdout.flush()

conf = {
    "bootstrap.servers": cfg["bootstrap"],
    "group.id": cfg["group"],
    "client.id": cfg.get("name", "member"),
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": cfg.get("session_timeout_ms", 6000),
    "heartbeat.interval.ms": cfg.get("heartbeat_ms", 500),
    "enable.partition.eof": False,
    "fetch.wait.max.ms": 100,
    "topic.metadata.refresh.interval.ms": 2000,
}
if cfg.get("strategy"):
    conf["partition.assignment.strategy"] = cfg["strategy"]
conf.update(cfg.get("extra", {}))
c = Consumer(conf)

PROTO = "COOPERATIVE" if cfg.get("strategy") == "cooperative-sticky" else "EAGER"

def on_assign(consumer, parts):
    emit(ev="assign", parts=sorted(p.partition for p in parts), protocol=PROTO)

def on_revoke(consumer, parts):
    emit(ev="revoke", parts=sorted(p.partition for p in parts), protocol=PROTO)

def on_lost(consumer, parts):
    emit(ev="lost", parts=sorted(p.partition for p in parts))

c.subscribe([cfg["topic"]], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
emit(ev="started")
stop = False
while not stop:
    if select.select([sys.stdin], [], [], 0)[0]:
        line = sys.stdin.readline()
        if not line or line.strip() == "stop":
            stop = True
            break
    msgs = c.consume(num_messages=100, timeout=0.2)
    last = {}
    for m in msgs:
        if m.error():
            emit(ev="error", error=str(m.error()))
            continue
        emit(ev="msg", p=m.partition(), o=m.offset(),
             k=m.key().decode() if m.key() is not None else None,
             v=m.value().decode() if m.value() is not None else None)
        last[m.partition()] = m.offset() + 1
    if last:
        offs = [TopicPartition(cfg["topic"], p, o) for p, o in sorted(last.items())]
        try:
            res = c.commit(offsets=offs, asynchronous=False)
            bad = [(tp.partition, str(tp.error)) for tp in (res or []) if tp.error]
            if bad:
                emit(ev="commit_error", error=str(bad))
            else:
                emit(ev="commit", offsets={str(p): o for p, o in last.items()})
        except KafkaException as e:
            emit(ev="commit_error", error=str(e))
c.close()
emit(ev="closed")
'''

_KAFKA_PYTHON_CHILD = r'''
import json, sys, time, select
from kafka import KafkaConsumer, ConsumerRebalanceListener
from kafka.errors import KafkaError

cfg = json.loads(sys.argv[1])

def emit(**ev):
    ev["t"] = time.time()
    sys.stdout.write(json.dumps(ev) + "\n")
    sys.stdout.flush()

kwargs = dict(
    bootstrap_servers=cfg["bootstrap"],
    group_id=cfg["group"],
    client_id=cfg.get("name", "member"),
    enable_auto_commit=False,
    auto_offset_reset="earliest",
    session_timeout_ms=cfg.get("session_timeout_ms", 6000),
    heartbeat_interval_ms=cfg.get("heartbeat_ms", 500),
    fetch_max_wait_ms=100,
    metadata_max_age_ms=5000,
)
kwargs.update(cfg.get("extra", {}))
c = KafkaConsumer(**kwargs)

class L(ConsumerRebalanceListener):
    def on_partitions_assigned(self, assigned):
        emit(ev="assign", parts=sorted(tp.partition for tp in assigned), protocol="EAGER")

    def on_partitions_revoked(self, revoked):
        emit(ev="revoke", parts=sorted(tp.partition for tp in revoked), protocol="EAGER")

c.subscribe([cfg["topic"]], listener=L())
emit(ev="started")
while True:
    if select.select([sys.stdin], [], [], 0)[0]:
        line = sys.stdin.readline()
        if not line or line.strip() == "stop":
            break
    recs = c.poll(timeout_ms=200, max_records=100)
    last = {}
    for tp, rs in recs.items():
        for m in rs:
            emit(ev="msg", p=m.partition, o=m.offset,
                 k=m.key.decode() if m.key is not None else None,
                 v=m.value.decode() if m.value is not None else None)
            last[m.partition] = m.offset + 1
    if last:
        try:
            c.commit()
            emit(ev="commit", offsets={str(p): o for p, o in last.items()})
        except KafkaError as e:
            emit(ev="commit_error", error=repr(e))
c.close()
emit(ev="closed")
'''


class GroupConsumerProc:
    """A subscribed group consumer in a child process."""

    def __init__(self, tmp_dir, bootstrap, group, topic, name, client="confluent",
                 strategy=None, extra=None, session_timeout_ms=SESSION_TIMEOUT_MS,
                 heartbeat_ms=HEARTBEAT_MS):
        self.name = name
        self.topic = topic
        self.expected_exit = False
        self.events = []
        self.lock = threading.Lock()
        script = Path(tmp_dir) / f"group_child_{client}.py"
        if not script.exists():
            script.write_text(_CONFLUENT_CHILD if client == "confluent" else _KAFKA_PYTHON_CHILD)
        cfg = {"bootstrap": bootstrap, "group": group, "topic": topic, "name": name,
               "strategy": strategy, "extra": extra or {},
               "session_timeout_ms": session_timeout_ms, "heartbeat_ms": heartbeat_ms}
        self.stderr_path = Path(tmp_dir) / f"{name}-stderr.log"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), json.dumps(cfg)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, cwd=str(tmp_dir))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.events.append(ev)

    # ---- views -----------------------------------------------------------

    def snapshot(self):
        with self.lock:
            return list(self.events)

    def owned(self, events=None):
        """Current partition set from assign/revoke/lost events. Under
        COOPERATIVE the callbacks carry increments; under EAGER an assign
        carries the full set and a revoke takes everything."""
        owned = set()
        for ev in events if events is not None else self.snapshot():
            if ev["ev"] == "assign":
                if ev.get("protocol") == "COOPERATIVE":
                    owned |= set(ev["parts"])
                else:
                    owned = set(ev["parts"])
            elif ev["ev"] in ("revoke", "lost"):
                owned -= set(ev["parts"])
        return owned

    def messages(self, since=0):
        return [ev for ev in self.snapshot()[since:] if ev["ev"] == "msg"]

    def consumed(self):
        """{(p, o): (k, v)} of every message consumed (duplicates collapse)."""
        return {(e["p"], e["o"]): (e["k"], e["v"]) for e in self.messages()}

    def committed(self):
        """Latest successfully committed offset per partition (this member)."""
        out = {}
        for ev in self.snapshot():
            if ev["ev"] == "commit":
                for p, o in ev["offsets"].items():
                    out[int(p)] = o
        return out

    def errors(self):
        return [ev for ev in self.snapshot() if ev["ev"] in ("error", "commit_error")]

    def describe(self):
        evs = self.snapshot()
        summary = [ev for ev in evs if ev["ev"] != "msg"][-30:]
        return (f"<{self.name} rc={self.proc.poll()} owned={sorted(self.owned(evs))} "
                f"msgs={sum(1 for e in evs if e['ev'] == 'msg')} events={summary} "
                f"stderr={self.stderr_tail()!r}>")

    def stderr_tail(self, n=3000):
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ---- control ---------------------------------------------------------

    def alive(self):
        return self.proc.poll() is None

    def check_alive(self):
        if not self.expected_exit and self.proc.poll() is not None:
            raise AssertionError(f"consumer child died unexpectedly: {self.describe()}")

    def kill(self, sig=signal.SIGKILL):
        self.expected_exit = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=5)

    def stop(self, timeout=30):
        """Graceful: close the consumer (LeaveGroup) and exit."""
        self.expected_exit = True
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"stop\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


def wait_until(pred, timeout, what, procs=(), interval=0.1):
    """Poll pred() until truthy; on timeout fail with a description of procs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            p.check_alive()
        v = pred()
        if v:
            return v
        time.sleep(interval)
    detail = "\n".join(p.describe() for p in procs)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{detail}")


def wait_stable_assignment(procs, partitions, timeout=60, settle=1.5):
    """Wait until the live procs' owned sets are disjoint, cover all
    partitions, every proc owns something, and nothing changed for `settle`
    seconds. Returns [owned set per proc]."""
    deadline = time.monotonic() + timeout
    last = None
    since = None
    while time.monotonic() < deadline:
        for p in procs:
            p.check_alive()
        owned = [p.owned() for p in procs]
        union = set().union(*owned)
        ok = (sum(len(o) for o in owned) == len(union) and union == set(partitions)
              and all(owned))
        key = [sorted(o) for o in owned]
        if ok and key == last:
            if time.monotonic() - since >= settle:
                return owned
        else:
            since = time.monotonic()
        last = key if ok else None
        time.sleep(0.1)
    detail = "\n".join(p.describe() for p in procs)
    raise AssertionError(f"no stable disjoint full assignment of {sorted(partitions)}:\n{detail}")


# ---------------------------------------------------------------------------
# Wire: group APIs
# ---------------------------------------------------------------------------

API_OFFSET_COMMIT = 8
API_OFFSET_FETCH = 9
API_FIND_COORDINATOR = 10
API_JOIN_GROUP = 11
API_HEARTBEAT = 12
API_LEAVE_GROUP = 13
API_SYNC_GROUP = 14

MEMBER_ID_REQUIRED = 79
UNKNOWN_MEMBER_ID = 25
REBALANCE_IN_PROGRESS = 27


def find_coordinator_v0(conn, group):
    r = conn.request(API_FIND_COORDINATOR, 0, string(group))
    return {"error_code": r.i16(), "node_id": r.i32(), "host": r.string(), "port": r.i32()}


def find_coordinator_v1(conn, key, key_type=0):
    r = conn.request(API_FIND_COORDINATOR, 1, string(key) + i8(key_type))
    return {"throttle": r.i32(), "error_code": r.i16(), "error_message": r.string(),
            "node_id": r.i32(), "host": r.string(), "port": r.i32()}


def join_group(conn, version, group, member_id="", protocols=(("range", b"meta"),),
               session_timeout_ms=10000, rebalance_timeout_ms=10000,
               protocol_type="consumer", group_instance_id=None):
    """JoinGroup v0..v5 (non-flexible)."""
    assert 0 <= version <= 5
    body = string(group) + i32(session_timeout_ms)
    if version >= 1:
        body += i32(rebalance_timeout_ms)
    body += string(member_id)
    if version >= 5:
        body += string(group_instance_id)
    body += string(protocol_type)
    body += array(list(protocols), lambda p: string(p[0]) + nbytes(p[1]))
    r = conn.request(API_JOIN_GROUP, version, body)
    out = {}
    if version >= 2:
        out["throttle"] = r.i32()
    out["error_code"] = r.i16()
    out["generation_id"] = r.i32()
    out["protocol_name"] = r.string()
    out["leader"] = r.string()
    out["member_id"] = r.string()

    def member(r):
        m = {"member_id": r.string()}
        if version >= 5:
            m["group_instance_id"] = r.string()
        m["metadata"] = r.nbytes()
        return m

    out["members"] = r.array(member)
    return out


def sync_group(conn, version, group, generation_id, member_id, assignments=(),
               group_instance_id=None):
    """SyncGroup v0..v3 (non-flexible). assignments: [(member_id, bytes)]."""
    assert 0 <= version <= 3
    body = string(group) + i32(generation_id) + string(member_id)
    if version >= 3:
        body += string(group_instance_id)
    body += array(list(assignments), lambda a: string(a[0]) + nbytes(a[1]))
    r = conn.request(API_SYNC_GROUP, version, body)
    out = {}
    if version >= 1:
        out["throttle"] = r.i32()
    out["error_code"] = r.i16()
    out["assignment"] = r.nbytes()
    return out


def heartbeat_v0(conn, group, generation_id, member_id):
    r = conn.request(API_HEARTBEAT, 0, string(group) + i32(generation_id) + string(member_id))
    return r.i16()


def leave_group_v0(conn, group, member_id):
    r = conn.request(API_LEAVE_GROUP, 0, string(group) + string(member_id))
    return r.i16()


def offset_fetch(conn, version, group, topics):
    """OffsetFetch v1..v5 (non-flexible). topics: {name: [partitions]} or
    None (all, v2+). Returns {"topics": {name: {p: (offset, metadata,
    error)}}, "error_code": ...}."""
    assert 1 <= version <= 5
    body = string(group)
    if topics is None:
        body += i32(-1)
    else:
        body += array(list(topics.items()),
                      lambda t: string(t[0]) + array(list(t[1]), i32))
    r = conn.request(API_OFFSET_FETCH, version, body)
    out = {}
    if version >= 3:
        out["throttle"] = r.i32()

    def part(r):
        p = r.i32()
        off = r.i64()
        if version >= 5:
            r.i32()  # committed leader epoch
        meta = r.string()
        err = r.i16()
        return p, (off, meta, err)

    def topic(r):
        name = r.string()
        return name, dict(r.array(part) or [])

    out["topics"] = dict(r.array(topic) or [])
    if version >= 2:
        out["error_code"] = r.i16()
    return out


def offset_commit_v2(conn, group, generation_id, member_id, topic, offsets, retention_ms=-1):
    """OffsetCommit v2. offsets: {p: (offset, metadata)}. Returns {p: err}."""
    body = (string(group) + i32(generation_id) + string(member_id) + i64(retention_ms)
            + array([(topic, list(offsets.items()))],
                    lambda t: string(t[0]) + array(
                        t[1], lambda po: i32(po[0]) + i64(po[1][0]) + string(po[1][1]))))
    r = conn.request(API_OFFSET_COMMIT, 2, body)

    def part(r):
        return r.i32(), r.i16()

    def topic_(r):
        return r.string(), dict(r.array(part) or [])

    return dict(r.array(topic_) or [])


def join_with_member_id(conn, version, group, **kw_):
    """JoinGroup, doing the KIP-394 handshake if the broker asks for it."""
    resp = join_group(conn, version, group, **kw_)
    if resp["error_code"] == MEMBER_ID_REQUIRED:
        kw_ = dict(kw_)
        kw_["member_id"] = resp["member_id"]
        resp = join_group(conn, version, group, **kw_)
    return resp


def run_in_thread(fn, *args, **kwargs):
    """Start fn in a thread; returns a callable result(timeout) that joins
    and returns the value or re-raises the exception."""
    box = {}

    def target():
        try:
            box["v"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001
            box["e"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()

    def result(timeout=30):
        t.join(timeout)
        assert not t.is_alive(), f"{fn.__name__} did not return within {timeout}s"
        if "e" in box:
            raise box["e"]
        return box["v"]

    return result


def coordinator_conn(broker, group, timeout=30):
    """FindCoordinator (retrying COORDINATOR_NOT_AVAILABLE) and return a
    kafka_wire.Conn to it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with broker.conn() as c:
            last = find_coordinator_v0(c, group)
        if last["error_code"] == 0:
            return kw.Conn(last["host"], last["port"], timeout=30)
        time.sleep(0.2)
    raise AssertionError(f"FindCoordinator({group}) failed: {last}")

