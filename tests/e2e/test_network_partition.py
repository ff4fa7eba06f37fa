"""A real network partition: one follower's link is cut while the other two keep serving.

Brokers 1 and 2 run in the test's own network namespace on the host side of a veth pair;
broker 3 runs in a namespace of its own behind the other end (`ip netns`, `ip link`). Taking
the link down cuts broker 3 off from the leader and from the controller quorum while its
process keeps running: the quorum fences it and takes it out of the ISR, acks=all writes
go on with the two in-sync replicas (min.insync.replicas=2), and once the link is back it
heartbeats again, fetches what it missed and rejoins the ISR.

Needs root (namespaces) and iproute2; skipped otherwise.
"""

import os
import shutil
import subprocess
import urllib.request
import uuid

import pytest

import kafka_wire as kw
from cluster_harness import AckedProducer, check_acked, read_all, wait_for
from conftest import free_port, unique_topic

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="network namespaces need root and iproute2",
)

HOST_IP = "10.231.0.1"
CUT_IP = "10.231.0.2"


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def cut_namespace():
    """A namespace joined to this one by a veth pair: (namespace, host-side link)."""
    tag = uuid.uuid4().hex[:6]
    namespace, host_link, cut_link = f"sluice-{tag}", f"sl{tag}h", f"sl{tag}c"
    try:
        ip("netns", "add", namespace)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"cannot create a network namespace here: {error.stderr.decode().strip()}")
    try:
        ip("link", "add", host_link, "type", "veth", "peer", "name", cut_link)
        ip("link", "set", cut_link, "netns", namespace)
        ip("addr", "add", f"{HOST_IP}/24", "dev", host_link)
        ip("link", "set", host_link, "up")
        ip("netns", "exec", namespace, "ip", "addr", "add", f"{CUT_IP}/24", "dev", cut_link)
        ip("netns", "exec", namespace, "ip", "link", "set", cut_link, "up")
        ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield namespace, host_link
    finally:
        subprocess.run(["ip", "link", "del", host_link], capture_output=True)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def log_end_offset(metrics_address, topic, partition):
    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5).read().decode()
    wanted = f'sluice_log_end_offset{{topic="{topic}",partition="{partition}"}}'
    for line in text.splitlines():
        if line.startswith(wanted):
            return int(float(line.split()[-1]))
    return None


def test_a_cut_off_follower_leaves_the_isr_and_rejoins_when_the_link_returns(
        make_broker, cut_namespace):
    namespace, host_link = cut_namespace
    hosts = {1: HOST_IP, 2: HOST_IP, 3: CUT_IP}
    controller_ports = {node: free_port() for node in hosts}
    voters = ",".join(f"{n}@{hosts[n]}:{controller_ports[n]}" for n in hosts)
    metrics_address = f"{CUT_IP}:{free_port()}"
    brokers = {}
    for node, host in hosts.items():
        extra = ["--node-id", str(node), "--controller-quorum-voters", voters]
        prefix = None
        if node == 3:
            extra += ["--metrics-listen", metrics_address]
            prefix = ["ip", "netns", "exec", namespace]
        brokers[node] = make_broker(
            name=f"node{node}", start=False, host=host, command_prefix=prefix,
            extra_args=extra,
            settings={"offsets.topic.num.partitions": 3, "broker.session.timeout.ms": 3000,
                      "broker.heartbeat.interval.ms": 500, "replica.lag.time.max.ms": 3000})
    for b in brokers.values():
        b.start(wait=False)
    for b in brokers.values():
        b.wait_ready(timeout=60)
    bootstrap = ",".join(b.bootstrap for b in brokers.values())

    from confluent_kafka.admin import AdminClient, NewTopic

    topic = unique_topic("netsplit")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    created = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=-1,
                                            replica_assignment=[[1, 2, 3]],
                                            config={"min.insync.replicas": "2"})])
    created[topic].result(timeout=30)

    def isr():
        with brokers[1].conn() as c:
            answer = kw.metadata_v1(c, [topic])
        partition = next(t for t in answer["topics"] if t["name"] == topic)["partitions"][0]
        return sorted(partition["isr"])

    wait_for(lambda: isr() == [1, 2, 3], "the full ISR", timeout=60)

    producer = AckedProducer(bootstrap, topic, tag="before")
    producer.produce(500)
    assert producer.flush() == 0

    # Cut broker 3 off: it is fenced by the quorum and leaves the ISR; writes go on.
    ip("link", "set", host_link, "down")
    wait_for(lambda: isr() == [1, 2], "broker 3 out of the ISR", timeout=60)
    during = AckedProducer(bootstrap.replace(f"{CUT_IP}:{brokers[3].port}", "").strip(","),
                           topic, tag="during")
    during.produce(500)
    assert during.flush() == 0
    acked_during, errors = during.snapshot()
    assert errors == [] and len(acked_during) == 500
    assert brokers[3].alive(), "the cut-off broker keeps running"

    # The link returns: broker 3 catches up and rejoins.
    ip("link", "set", host_link, "up")
    wait_for(lambda: isr() == [1, 2, 3], "broker 3 back in the ISR", timeout=90)
    acked_before, _ = producer.snapshot()
    total = len(acked_before) + len(acked_during)
    wait_for(lambda: (log_end_offset(metrics_address, topic, 0) or 0) >= total,
             "broker 3 holds every acknowledged record", timeout=30)

    consumed = read_all(bootstrap, topic, [0])
    assert check_acked(acked_before + acked_during, consumed) == []
