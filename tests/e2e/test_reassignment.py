"""Partition reassignment (KIP-455) on four `sluice serve` processes (issue 8, stage 5).

A reassignment adds the target replicas, which copy the partition from the leader; once
every one of them is in the ISR the controller drops the old replicas (they delete their
copy) and moves leadership to the first target replica if the old leader is leaving.
Clients: kafka-python's AdminClient (confluent-kafka's has no reassignment call) and the
`sluice cluster reassign` / `reassignments` CLI; records are produced with confluent-kafka
(acks=all, idempotence) before and during the move, and every acknowledged record must
still be readable, in order, from the new replicas.
"""

import json
import signal
import subprocess
import threading
import time

import kafka_wire as kw
from conftest import confluent_consume_all, free_port, sluice_bin, unique_topic

SESSION_TIMEOUT_MS = 10_000
MOVE_TIMEOUT_S = 120


def start_cluster(make_broker, size=4):
    controller_ports = [free_port() for _ in range(size)]
    voters = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(controller_ports))
    brokers = [
        make_broker(
            name=f"node{i + 1}",
            start=False,
            settings={
                "offsets.topic.num.partitions": 2,
                "broker.session.timeout.ms": SESSION_TIMEOUT_MS,
                "broker.heartbeat.interval.ms": 500,
            },
            extra_args=["--node-id", str(i + 1), "--controller-quorum-voters", voters],
        )
        for i in range(size)
    ]
    for b in brokers:
        b.start(wait=False)
    for b in brokers:
        b.wait_ready(timeout=60)
    for b in brokers:
        wait_for(lambda b=b: broker_ids(b) == list(range(1, size + 1)),
                 f"{size} brokers in the metadata of {b}")
    return {i + 1: b for i, b in enumerate(brokers)}


def wait_for(condition, what, timeout=30):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}: last={last}")


def metadata(broker, topics):
    with kw.Conn("127.0.0.1", broker.port) as c:
        return kw.metadata_v1(c, topics)


def broker_ids(broker):
    return sorted(b["node_id"] for b in metadata(broker, [])["brokers"])


def partition_state(broker, topic, partition):
    for t in metadata(broker, [topic])["topics"]:
        if t["name"] == topic:
            for p in t["partitions"]:
                if p["partition"] == partition:
                    return p
    return None


def create_replicated_topic(brokers, topic, partitions, replication_factor=2):
    """Creates the topic (min.insync.replicas=2) and waits until every broker sees every
    partition with a leader and a full ISR."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap_of(brokers)})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                            replication_factor=replication_factor,
                                            config={"min.insync.replicas": "2"})])
    futures[topic].result(timeout=30)

    def settled():
        states = {}
        for b in brokers.values():
            for p in range(partitions):
                s = partition_state(b, topic, p)
                if s is None or s["leader"] < 0 or sorted(s["isr"]) != sorted(s["replicas"]):
                    return None
                states[p] = s
        return states

    return wait_for(settled, f"{topic} replicated on every broker", timeout=60)


def bootstrap_of(brokers):
    return ",".join(b.bootstrap for b in brokers.values())


def produce(bootstrap, topic, values, partition=0):
    """Produces with acks=all and idempotence; returns the acknowledged values in offset
    order."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 5})
    acked, errors = [], []

    def on_delivery(err, msg):
        (errors if err is not None else acked).append(
            err if err is not None else (msg.offset(), msg.value()))

    for v in values:
        producer.produce(topic, value=v, partition=partition, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(60) == 0
    assert errors == [], errors
    return [v for _, v in sorted(acked)]


def move_finished(brokers, topic, partition, target):
    """True once every broker's metadata shows exactly `target` as replicas and ISR."""
    for b in brokers.values():
        s = partition_state(b, topic, partition)
        if s is None or s["replicas"] != target or sorted(s["isr"]) != sorted(target):
            return False
        if s["leader"] not in target:
            return False
    return True


def sluice_cli(*args):
    result = subprocess.run([sluice_bin(), *args], capture_output=True, text=True, timeout=180)
    return result.returncode, result.stdout, result.stderr


def test_move_a_partition_to_two_other_brokers_with_kafka_python(make_broker):
    from kafka import KafkaAdminClient, TopicPartition

    brokers = start_cluster(make_broker)
    topic = unique_topic("move")
    before = create_replicated_topic(brokers, topic, partitions=1)[0]
    original = before["replicas"]
    target = sorted(set(brokers) - set(original))
    assert len(original) == 2 and len(target) == 2

    bootstrap = bootstrap_of(brokers)
    values = [f"v{n:05d}".encode() * 20 for n in range(2000)]
    acked = produce(bootstrap, topic, values)
    assert acked == values

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60_000)
    try:
        tp = TopicPartition(topic, 0)
        result = admin.alter_partition_reassignments({tp: target})
        assert result == {tp: None}, result
        # Errors come per partition: an unknown broker is an invalid assignment.
        bad = admin.alter_partition_reassignments({TopicPartition(topic, 0): [target[0], 99]})
        assert bad[tp] is not None and bad[tp].errno == 39, bad  # INVALID_REPLICA_ASSIGNMENT

        wait_for(lambda: admin.list_partition_reassignments() == {},
                 "no reassignment in progress", timeout=MOVE_TIMEOUT_S)
        wait_for(lambda: move_finished(brokers, topic, 0, target),
                 f"replicas {target} on every broker", timeout=MOVE_TIMEOUT_S)
        # Nothing to cancel any more.
        cancelled = admin.alter_partition_reassignments({tp: None})
        assert cancelled[tp] is not None and cancelled[tp].errno == 85, cancelled
    finally:
        admin.close()

    after = partition_state(brokers[target[0]], topic, 0)
    assert after["leader"] in target

    # Every record is read back from the new leader, in order.
    leader = brokers[after["leader"]]
    messages = confluent_consume_all(leader.bootstrap, topic, [0], len(values))
    assert [m.value() for m in messages] == values
    assert [m.offset() for m in messages] == list(range(len(values)))

    # The old replicas deleted their copy; the new ones hold one.
    for broker_id in original:
        wait_for(lambda b=brokers[broker_id]: not (b.data_dir / f"{topic}-0").exists(),
                 f"broker {broker_id} dropped its copy")
    for broker_id in target:
        assert (brokers[broker_id].data_dir / f"{topic}-0").is_dir()


def test_drain_a_broker_with_the_cli_while_producing(make_broker):
    brokers = start_cluster(make_broker)
    topic = unique_topic("drain")
    states = create_replicated_topic(brokers, topic, partitions=1)
    original = states[0]["replicas"]
    # Drain the leader: the hardest case (leadership must move while producers write).
    drained = states[0]["leader"]
    spare = min(set(brokers) - set(original))
    target = [r if r != drained else spare for r in original]
    bootstrap = bootstrap_of(brokers)

    preload = [f"pre-{n:05d}".encode() * 30 for n in range(3000)]
    assert produce(bootstrap, topic, preload) == preload

    # A producer keeps writing through the move.
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                         "enable.idempotence": True, "linger.ms": 2,
                         "message.timeout.ms": 120_000})
    acked, errors = [], []
    stop = threading.Event()

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked.append((msg.offset(), msg.value()))

    def keep_producing():
        n = 0
        while not stop.is_set():
            producer.produce(topic, value=f"live-{n:06d}".encode(), partition=0,
                             on_delivery=on_delivery)
            producer.poll(0.002)
            n += 1

    writer = threading.Thread(target=keep_producing)
    writer.start()
    try:
        time.sleep(1)
        code, out, err = sluice_cli("cluster", "reassign", "-b", brokers[spare].bootstrap,
                                    "--topic", topic, "--partition", "0",
                                    "--replicas", ",".join(map(str, target)),
                                    "--wait", "-o", "json")
        assert code == 0, (out, err)
        report = json.loads(out)
        assert report["status"] == "done" and report["target_replicas"] == target, report
        time.sleep(1)
    finally:
        stop.set()
        writer.join()
    assert producer.flush(120) == 0
    assert errors == [], errors
    live_acked = [v for _, v in sorted(acked)]
    assert len(live_acked) > 0

    wait_for(lambda: move_finished(brokers, topic, 0, target), f"replicas {target}",
             timeout=MOVE_TIMEOUT_S)
    assert partition_state(brokers[spare], topic, 0)["leader"] != drained

    code, out, err = sluice_cli("cluster", "reassignments", "-b", brokers[1].bootstrap,
                                "-o", "json")
    assert code == 0 and json.loads(out) == [], (out, err)

    # Nothing acknowledged is lost and the order is kept: the log is the preload, then the
    # live records in the order they were acknowledged (idempotence: no duplicates).
    total = len(preload) + len(live_acked)
    messages = confluent_consume_all(bootstrap, topic, [0], total, timeout=120)
    assert [m.value() for m in messages] == preload + live_acked
    live_numbers = [int(v.split(b"-")[1]) for v in live_acked]
    assert live_numbers == list(range(len(live_numbers)))

    wait_for(lambda: not (brokers[drained].data_dir / f"{topic}-0").exists(),
             f"broker {drained} dropped its copy")


def test_cancel_with_the_cli_goes_back_to_the_original_replicas(make_broker):
    brokers = start_cluster(make_broker)
    topic = unique_topic("cancel")
    states = create_replicated_topic(brokers, topic, partitions=1)
    original = states[0]["replicas"]
    spare = min(set(brokers) - set(original))
    bootstrap = bootstrap_of(brokers)
    values = [f"c-{n:04d}".encode() for n in range(200)]
    assert produce(bootstrap, topic, values) == values
    any_broker = next(b for i, b in brokers.items() if i != spare)

    # Errors of the CLI: an unknown topic is "not found" (3), a bad target fails (1).
    code, _, err = sluice_cli("cluster", "reassign", "-b", any_broker.bootstrap,
                              "--topic", "no-such-topic", "--partition", "0",
                              "--replicas", "1")
    assert code == 3, err
    code, _, err = sluice_cli("cluster", "reassign", "-b", any_broker.bootstrap,
                              "--topic", topic, "--partition", "0", "--replicas", "1,1")
    assert code == 1 and "INVALID_REPLICA_ASSIGNMENT" in err, err

    # The spare broker is paused (registered, not yet fenced): the move cannot finish.
    brokers[spare].proc.send_signal(signal.SIGSTOP)
    try:
        target = [original[0], spare]
        code, out, err = sluice_cli("cluster", "reassign", "-b", any_broker.bootstrap,
                                    "--topic", topic, "--partition", "0",
                                    "--replicas", ",".join(map(str, target)), "-o", "json")
        assert code == 0, (out, err)
        report = json.loads(out)
        assert report["status"] == "moving", report
        assert report["reassignment"]["adding_replicas"] == [spare], report

        code, out, err = sluice_cli("cluster", "reassignments", "-b", any_broker.bootstrap)
        assert code == 0, err
        rows = [line.split() for line in out.strip().splitlines()]
        assert rows[0] == ["TOPIC", "PARTITION", "REPLICAS", "TARGET", "ADDING", "REMOVING"]
        assert rows[1][:5] == [topic, "0", ",".join(map(str, target + [original[1]])),
                               ",".join(map(str, target)), str(spare)], rows

        code, out, err = sluice_cli("cluster", "reassign", "-b", any_broker.bootstrap,
                                    "--topic", topic, "--partition", "0", "--cancel",
                                    "-o", "json")
        assert code == 0, (out, err)
        assert json.loads(out)["status"] == "cancelled"
        state = partition_state(any_broker, topic, 0)
        assert state["replicas"] == original and sorted(state["isr"]) == sorted(original)
        code, out, err = sluice_cli("cluster", "reassignments", "-b", any_broker.bootstrap,
                                    "-o", "json")
        assert code == 0 and json.loads(out) == [], (out, err)
        # A second cancel has nothing to cancel.
        code, _, err = sluice_cli("cluster", "reassign", "-b", any_broker.bootstrap,
                                  "--topic", topic, "--partition", "0", "--cancel")
        assert code == 1 and "NO_REASSIGNMENT_IN_PROGRESS" in err, err
    finally:
        brokers[spare].proc.send_signal(signal.SIGCONT)

    messages = confluent_consume_all(bootstrap, topic, [0], len(values))
    assert [m.value() for m in messages] == values
