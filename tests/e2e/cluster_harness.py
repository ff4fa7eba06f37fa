"""Helpers for tests that run several `sluice serve` processes as one cluster.

Used by `test_cluster.py` (stage 2: placement, fencing) and `test_replication.py` (stage 3:
replicated partitions, ISR, failover). Everything here talks to real processes through
`kafka_wire` or the real client libraries; `check_acked` is a pure function (unit-tested in
`test_replication.py` with fabricated violations) that proves no acknowledged record was lost.
"""

import threading
import time
import urllib.request
from collections import defaultdict

import kafka_wire as kw
from conftest import free_port, wait_topic_partitions

NOT_LEADER_OR_FOLLOWER = 6
LEADER_NOT_AVAILABLE = 5
NOT_ENOUGH_REPLICAS = 19
NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20
SESSION_TIMEOUT_MS = 3000
HEARTBEAT_INTERVAL_MS = 500


# --------------------------------------------------------------------------
# Starting a cluster
# --------------------------------------------------------------------------


def start_cluster(make_broker, size=3, settings=None, metrics=False):
    """Start `size` brokers, every one a controller voter (node ids 1..size), and wait until
    each answers. `settings` are added to (and override) the defaults below on every broker.
    With `metrics=True` each broker also serves Prometheus metrics; its port is kept in the
    broker's `metrics_port` attribute.

    Returns the brokers in node id order (`brokers[i]` is node `i + 1`)."""
    # Ports come from `free_port`, which releases them before the brokers bind: another
    # process's outgoing connection can take one meanwhile. A cluster that fails to start
    # because of that is started again on new ports (and new directories).
    for attempt in range(3):
        try:
            return _start_cluster_once(make_broker, size, settings, metrics, attempt)
        except AssertionError as error:
            if "Address already in use" not in str(error) or attempt == 2:
                raise


def _start_cluster_once(make_broker, size, settings, metrics, attempt):
    """One attempt of `start_cluster`."""
    controller_ports = [free_port() for _ in range(size)]
    voters = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(controller_ports))
    common = {
        "offsets.topic.num.partitions": 3,
        "broker.session.timeout.ms": SESSION_TIMEOUT_MS,
        "broker.heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
    }
    common.update(settings or {})
    brokers = []
    for i in range(size):
        extra_args = ["--node-id", str(i + 1), "--controller-quorum-voters", voters,
                      "--broker-rack", f"rack-{i % 2}"]
        metrics_port = None
        if metrics:
            metrics_port = free_port()
            extra_args += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
        name = f"node{i + 1}" if attempt == 0 else f"node{i + 1}-retry{attempt}"
        b = make_broker(name=name, start=False, settings=dict(common), extra_args=extra_args)
        b.node_id = i + 1
        b.metrics_port = metrics_port
        brokers.append(b)
    # A broker serves once the quorum has a leader and it is registered: start all first.
    for b in brokers:
        b.start(wait=False)
    try:
        for b in brokers:
            b.wait_ready(timeout=60)
    except AssertionError:
        for b in brokers:
            b.cleanup()
        raise
    return brokers


def bootstrap_of(brokers):
    """bootstrap.servers naming every given broker that is running."""
    return ",".join(b.bootstrap for b in brokers if b.alive())


# --------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------


def metadata(broker, topics):
    with kw.Conn(broker.host, broker.port) as c:
        return kw.metadata_v1(c, topics)


def metadata_v7(broker, topics):
    """Metadata v7 (partitions carry leader_epoch and offline_replicas)."""
    with kw.Conn(broker.host, broker.port) as c:
        return kw.metadata_v7(c, topics)


def wait_for(condition, what, timeout=30):
    """Call `condition` until it returns something truthy (returned); fail after `timeout`
    seconds with the last value. Never used to assert how long something took."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (OSError, kw.ConnectionClosed) as e:
            # A broker being killed or restarted; try again.
            last = repr(e)
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: last={last}")


def broker_ids(broker):
    return sorted(b["node_id"] for b in metadata(broker, [])["brokers"])


def leaders(broker, topic):
    """{partition: {"leader", "replicas", "isr", "error_code", ...}} from Metadata v1."""
    t = next(t for t in metadata(broker, [topic])["topics"] if t["name"] == topic)
    return {p["partition"]: p for p in t["partitions"]}


def partitions_v7(broker, topic):
    """{partition: {..., "leader_epoch", "offline_replicas"}} from Metadata v7."""
    t = next(t for t in metadata_v7(broker, [topic])["topics"] if t["name"] == topic)
    return {p["partition"]: p for p in t["partitions"]}


def produce_one(broker, topic, partition, value, acks=-1):
    batch = kw.encode_batch([(b"k", value)])
    with kw.Conn(broker.host, broker.port) as c:
        return kw.produce_v3(c, topic, partition, batch, acks=acks)


def find_coordinator(broker, group):
    """The group's coordinator as `broker` answers FindCoordinator v1."""
    with kw.Conn(broker.host, broker.port) as c:
        return kw.find_coordinator_v1(c, group)


# --------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------


def create_replicated_topic(bootstrap, name, partitions=1, replication_factor=3,
                            replica_assignment=None, config=None, timeout=30):
    """CreateTopics through confluent-kafka's AdminClient: either `partitions` x
    `replication_factor`, or an explicit `replica_assignment` (list of broker id lists, one per
    partition; the first id is the preferred leader)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    if replica_assignment is not None:
        new = NewTopic(name, num_partitions=len(replica_assignment), replication_factor=-1,
                       replica_assignment=replica_assignment, config=config or {})
        partitions = len(replica_assignment)
    else:
        new = NewTopic(name, num_partitions=partitions, replication_factor=replication_factor,
                       config=config or {})
    futs = admin.create_topics([new], operation_timeout=timeout)
    futs[name].result(timeout=timeout)
    return wait_topic_partitions(bootstrap.split(",")[0], name, partitions, timeout=timeout)


def wait_full_isr(brokers, topic, partitions, replication_factor, timeout=60):
    """Wait until every given broker's Metadata shows each partition with a leader and all
    `replication_factor` replicas in its ISR; returns the placement seen by the first."""
    for b in brokers:
        wait_for(lambda b=b: (lambda ps: len(ps) == partitions and all(
            p["leader"] >= 0 and len(p["replicas"]) == replication_factor
            and sorted(p["isr"]) == sorted(p["replicas"]) for p in ps.values()))(
                leaders(b, topic)),
            f"{topic}: {partitions} partitions with full ISR on {b}", timeout=timeout)
    return leaders(brokers[0], topic)


# --------------------------------------------------------------------------
# Controller metrics
# --------------------------------------------------------------------------


def scrape_metrics(broker, timeout=5):
    """{metric name: value} of the unlabelled-by-topic samples of a broker's /metrics
    (labels are dropped: the controller gauges have only `node_id`)."""
    url = f"http://127.0.0.1:{broker.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_and_labels, _, value = line.rpartition(" ")
        name = name_and_labels.split("{", 1)[0]
        try:
            out.setdefault(name, float(value))
        except ValueError:
            continue
    return out


def active_controller(brokers):
    """Node id of the broker whose controller says it is the leader (and that every live
    broker agrees on), or None."""
    leader = None
    for b in brokers:
        if not b.alive():
            continue
        try:
            m = scrape_metrics(b)
        except OSError:
            return None
        if m.get("sluice_controller_is_leader") == 1:
            if leader is not None:
                return None
            leader = b.node_id
    if leader is None:
        return None
    for b in brokers:
        if b.alive() and scrape_metrics(b).get("sluice_controller_leader_id") != leader:
            return None
    return leader


# --------------------------------------------------------------------------
# Producing with acknowledgements recorded, reading everything back
# --------------------------------------------------------------------------


class AckedProducer:
    """A confluent-kafka idempotent acks=all producer whose delivery callback records every
    acknowledged record as (key, value, partition, offset) in acknowledgement order, and every
    failed one in `errors`. Values are unique (`<tag>-<sequence>`), which is what lets
    `check_acked` find each record again."""

    def __init__(self, bootstrap, topic, tag="v", keys=20, extra_conf=None):
        from confluent_kafka import Producer

        conf = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            # Long enough to ride out a fencing (session timeout) plus a leader election on a
            # loaded machine; a record not acknowledged by then counts as failed, not lost.
            "message.timeout.ms": 60000,
            "topic.metadata.refresh.interval.ms": 1000,
            "retry.backoff.ms": 100,
            # A SIGSTOPped broker never answers: give up on its connections early.
            "socket.timeout.ms": 10000,
        }
        conf.update(extra_conf or {})
        self.producer = Producer(conf)
        self.topic = topic
        self.tag = tag
        self.keys = [f"key-{i}".encode() for i in range(keys)]
        self.sent = 0
        self.acked = []
        self.errors = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def _on_delivery(self, err, msg):
        with self._lock:
            if err is not None:
                self.errors.append((msg.key(), msg.value(), err))
            else:
                self.acked.append((msg.key(), msg.value(), msg.partition(), msg.offset()))

    def produce(self, n):
        """Send `n` records (not waiting for them)."""
        for _ in range(n):
            seq = self.sent
            self.sent += 1
            self.producer.produce(self.topic, key=self.keys[seq % len(self.keys)],
                                  value=f"{self.tag}-{seq}".encode(),
                                  on_delivery=self._on_delivery)
            self.producer.poll(0)

    def flush(self, timeout=90):
        return self.producer.flush(timeout)

    def acked_count(self, partition=None):
        with self._lock:
            return sum(1 for a in self.acked if partition is None or a[2] == partition)

    def acked_from(self, seq, partition=None):
        """How many records sent as number `seq` or later were acknowledged (on `partition`):
        proof that writes made after some event succeeded."""
        with self._lock:
            return sum(1 for _, value, p, _ in self.acked
                       if int(value.rsplit(b"-", 1)[1]) >= seq
                       and (partition is None or p == partition))

    def snapshot(self):
        with self._lock:
            return list(self.acked), list(self.errors)

    # ---- background load -------------------------------------------------

    def start_load(self, batch=10, pause_s=0.05, max_in_flight=2000):
        """Produce `batch` records every `pause_s` in a thread until `stop_load`."""

        def run():
            while not self._stop.is_set():
                if len(self.producer) < max_in_flight:
                    self.produce(batch)
                self.producer.poll(pause_s)

        self._thread = threading.Thread(target=run, name="acked-producer", daemon=True)
        self._thread.start()

    def stop_load(self, flush_timeout=90):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self.flush(flush_timeout)


def high_watermarks(bootstrap, topic, partitions, timeout=30):
    """{partition: high watermark} through confluent-kafka (ListOffsets latest). Retried
    while leadership moves: the client's metadata may still name a broker that no longer
    leads (NOT_LEADER_OR_FOLLOWER), which get_watermark_offsets does not retry itself."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "sluice-e2e-watermarks",
                  "enable.auto.commit": False, "topic.metadata.refresh.interval.ms": 1000})
    try:
        deadline = time.monotonic() + timeout
        out = {}
        for p in partitions:
            while True:
                try:
                    out[p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    break
                except KafkaException as e:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no high watermark of {topic}/{p}: {e}") from e
                    time.sleep(0.5)
        return out
    finally:
        c.close()


def read_all(bootstrap, topic, partitions, timeout=60):
    """Every record of the given partitions up to their current high watermarks, read with a
    confluent-kafka consumer from offset 0: list of (key, value, partition, offset)."""
    from confluent_kafka import Consumer, TopicPartition

    ends = high_watermarks(bootstrap, topic, partitions)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "sluice-e2e-read-all",
                  "enable.auto.commit": False, "enable.auto.offset.store": False,
                  "auto.offset.reset": "error", "enable.partition.eof": False,
                  "topic.metadata.refresh.interval.ms": 1000})
    out = []
    next_offset = {p: 0 for p in partitions}
    try:
        c.assign([TopicPartition(topic, p, 0) for p in partitions if ends[p] > 0])
        deadline = time.monotonic() + timeout
        while (any(next_offset[p] < ends[p] for p in partitions)
               and time.monotonic() < deadline):
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                # Transient errors while leadership moves are retried by librdkafka.
                if m.error().fatal():
                    raise AssertionError(f"consume error: {m.error()}")
                continue
            out.append((m.key(), m.value(), m.partition(), m.offset()))
            next_offset[m.partition()] = m.offset() + 1
        missing = {p: (next_offset[p], ends[p]) for p in partitions if next_offset[p] < ends[p]}
        assert not missing, f"did not read up to the high watermarks (next, end): {missing}"
        return out
    finally:
        c.close()


def check_acked(acked, consumed):
    """The no-loss checker. `acked`: (key, value, partition, offset) of every acknowledged
    record in the order the delivery callbacks reported them; `consumed`: the same tuples of
    everything read back. Returns a list of violations (empty when none):

    - an acknowledged record missing, or found at another partition/offset than acknowledged;
    - any value read more than once (the producers are idempotent and values unique);
    - two records read at the same partition and offset;
    - per partition, acknowledgements reported out of offset order, or records read back in a
      different order than they were acknowledged."""
    violations = []
    by_value = defaultdict(list)
    by_position = defaultdict(list)
    for rec in consumed:
        key, value, partition, offset = rec
        by_value[value].append(rec)
        by_position[(partition, offset)].append(rec)
    for value, recs in by_value.items():
        if len(recs) > 1:
            violations.append(f"value {value!r} read {len(recs)} times: {recs}")
    for position, recs in by_position.items():
        if len(recs) > 1:
            violations.append(f"{len(recs)} records read at partition/offset {position}: {recs}")
    last_offset = {}
    for rec in acked:
        key, value, partition, offset = rec
        found = by_value.get(value)
        if not found:
            violations.append(f"acknowledged record lost: {rec}")
        elif all((k, p, o) != (key, partition, offset) for k, _, p, o in found):
            violations.append(f"acknowledged record {rec} read back elsewhere: {found}")
        if partition in last_offset and offset <= last_offset[partition]:
            violations.append(
                f"partition {partition}: ack at offset {offset} reported after offset "
                f"{last_offset[partition]}")
        last_offset[partition] = offset
    # Order: the acked records of each partition, sorted by the offsets they were read at
    # (first occurrence; duplicates are reported above), must be in acknowledgement order.
    ack_rank = {rec[1]: i for i, rec in enumerate(acked)}
    read_order = defaultdict(list)
    ranked = set()
    for key, value, partition, offset in sorted(consumed, key=lambda r: (r[2], r[3])):
        if value in ack_rank and value not in ranked:
            ranked.add(value)
            read_order[partition].append(ack_rank[value])
    for partition, ranks in read_order.items():
        if ranks != sorted(ranks):
            violations.append(f"partition {partition}: records read in another order than acked")
    return violations

