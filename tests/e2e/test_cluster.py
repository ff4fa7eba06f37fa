"""Three `sluice serve` processes form one cluster on one machine (issue 8, stage 2).

Every broker is a voter of the controller quorum (node ids 1-3, distinct Kafka and
controller ports and data directories). Partitions have one replica (replication is
stage 3): the controller places them over the brokers, each broker serves the partitions
it leads and answers NOT_LEADER_OR_FOLLOWER for the others.
"""

import signal
import time
from collections import defaultdict

from cluster_harness import (
    LEADER_NOT_AVAILABLE,
    NOT_LEADER_OR_FOLLOWER,
    SESSION_TIMEOUT_MS,
    broker_ids,
    leaders,
    metadata,
    produce_one,
    start_cluster,
    wait_for,
)
from conftest import confluent_consume_all, create_topic, unique_topic, wait_topic_partitions


def test_three_brokers_form_one_cluster_and_survive_losing_one(make_broker):
    brokers = start_cluster(make_broker)
    by_id = {i + 1: b for i, b in enumerate(brokers)}

    # Metadata from any broker lists all three, with their racks.
    for b in brokers:
        wait_for(lambda b=b: broker_ids(b) == [1, 2, 3], f"3 brokers in metadata of {b}")
    racks = {x["node_id"]: x["rack"] for x in metadata(brokers[0], [])["brokers"]}
    assert racks == {1: "rack-0", 2: "rack-1", 3: "rack-0"}

    # The controller spreads a 6-partition topic over all three brokers.
    topic = unique_topic("cluster")
    create_topic(brokers[1].bootstrap, topic, partitions=6)
    for b in brokers:
        wait_topic_partitions(b.bootstrap, topic, 6)
    placement = leaders(brokers[2], topic)
    assert sorted(placement) == list(range(6))
    assert {p["leader"] for p in placement.values()} == {1, 2, 3}
    for p in placement.values():
        assert p["replicas"] == [p["leader"]] and p["isr"] == [p["leader"]]
    # Every broker agrees on the placement.
    for b in brokers:
        wait_for(lambda b=b: {k: v["leader"] for k, v in leaders(b, topic).items()}
                 == {k: v["leader"] for k, v in placement.items()}, f"placement on {b}")

    # confluent-kafka produces keyed records through the cluster and reads them back.
    from confluent_kafka import Producer

    bootstrap = ",".join(b.bootstrap for b in brokers)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 5})
    errors = []
    delivered = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered.append((msg.key(), msg.value(), msg.partition(), msg.offset()))

    keys = [f"key-{i}".encode() for i in range(20)]
    for n in range(300):
        producer.produce(topic, key=keys[n % len(keys)], value=f"{n}".encode(),
                         on_delivery=on_delivery)
    assert producer.flush(60) == 0
    assert errors == []
    assert len(delivered) == 300
    messages = confluent_consume_all(bootstrap, topic, list(range(6)), 300)
    seen_partition = {}
    per_key = defaultdict(list)
    for m in messages:
        assert seen_partition.setdefault(m.key(), m.partition()) == m.partition()
        per_key[m.key()].append(int(m.value()))
    for key, values in per_key.items():
        assert values == sorted(values), f"order of {key}"
    assert sorted(v for values in per_key.values() for v in values) == list(range(300))
    assert len({m.partition() for m in messages}) > 1

    # A broker that does not lead a partition refuses produce to it.
    for partition, p in placement.items():
        leader = p["leader"]
        other = by_id[leader % 3 + 1]
        response = produce_one(other, topic, partition, b"wrong broker")
        assert response["error_code"] == NOT_LEADER_OR_FOLLOWER, (partition, leader, response)
        assert produce_one(by_id[leader], topic, partition, b"right broker")["error_code"] == 0

    # SIGKILL broker 3: the controller fences it after its session timeout; brokers 1 and 2
    # keep serving their partitions; its partitions have no leader (one replica).
    by_id[3].kill(signal.SIGKILL)
    wait_for(lambda: broker_ids(brokers[0]) == [1, 2], "broker 3 fenced",
             timeout=SESSION_TIMEOUT_MS / 1000 + 30)
    after = leaders(brokers[0], topic)
    for partition, p in placement.items():
        if p["leader"] == 3:
            assert after[partition]["leader"] == -1
            assert after[partition]["error_code"] == LEADER_NOT_AVAILABLE
        else:
            assert after[partition]["leader"] == p["leader"]
            response = produce_one(by_id[p["leader"]], topic, partition, b"after the kill")
            assert response["error_code"] == 0, (partition, response)

    # Metadata changes still commit with 2 of 3 voters: a new topic, placed on 1 and 2.
    second = unique_topic("after-kill")
    create_topic(brokers[0].bootstrap, second, partitions=4)
    wait_topic_partitions(brokers[0].bootstrap, second, 4)
    placed = wait_topic_partitions(brokers[1].bootstrap, second, 4)
    assert {p["leader"] for p in placed["partitions"]} == {1, 2}
    for p in placed["partitions"]:
        response = produce_one(by_id[p["leader"]], second, p["partition"], b"v")
        assert response["error_code"] == 0, (p, response)


def test_broker_restart_rejoins_and_leads_its_partitions_again(make_broker):
    brokers = start_cluster(make_broker)
    topic = unique_topic("rejoin")
    create_topic(brokers[0].bootstrap, topic, partitions=3)
    # Metadata reaches each broker through its own controller's image: wait for all.
    for b in brokers:
        wait_topic_partitions(b.bootstrap, topic, 3)
    placement = leaders(brokers[0], topic)
    led_by_2 = [k for k, p in placement.items() if p["leader"] == 2]
    assert led_by_2, placement
    partition = led_by_2[0]
    assert produce_one(brokers[1], topic, partition, b"before")["error_code"] == 0
    brokers[1].kill(signal.SIGKILL)
    brokers[1].start(wait=True)
    # After the restart broker 2 is unfenced and leads its partition with a newer epoch.
    # Broker 2's own view too: it may learn that it leads after broker 1 does.
    wait_for(lambda: all(leaders(b, topic)[partition]["leader"] == 2 for b in brokers[:2]),
             "broker 2 leads again")
    response = produce_one(brokers[1], topic, partition, b"after")
    assert response["error_code"] == 0
    assert response["base_offset"] == 1, "the record from before the restart is kept"

    # SIGTERM: a controlled shutdown (the controller releases the broker), then a clean exit.
    assert brokers[1].kill(signal.SIGTERM) == 0
    assert "controlled shutdown: the controller released this broker" in brokers[1].stderr_text()
    brokers[1].start(wait=True)
    wait_for(lambda: all(leaders(b, topic)[partition]["leader"] == 2 for b in brokers[1:]),
             "broker 2 leads again")
    response = produce_one(brokers[1], topic, partition, b"after the clean restart")
    assert response["error_code"] == 0 and response["base_offset"] == 2, response


def test_group_coordinator_is_the_leader_of_the_groups_offsets_partition(make_broker):
    brokers = start_cluster(make_broker)
    topic = unique_topic("groups")
    create_topic(brokers[0].bootstrap, topic, partitions=3)
    for b in brokers:
        wait_topic_partitions(b.bootstrap, topic, 3)
    from confluent_kafka import Consumer, Producer, TopicPartition

    bootstrap = ",".join(b.bootstrap for b in brokers)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for n in range(60):
        producer.produce(topic, key=f"k{n % 7}".encode(), value=str(n).encode())
    assert producer.flush(60) == 0

    # Groups spread over the three offsets partitions, hence over coordinators.
    offsets_leaders = leaders(brokers[0], "__consumer_offsets")
    assert {p["leader"] for p in offsets_leaders.values()} <= {1, 2, 3}
    for group in ("g-alpha", "g-beta", "g-gamma", "g-delta"):
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        try:
            consumer.subscribe([topic])
            got = 0
            deadline = time.monotonic() + 60
            while got < 60 and time.monotonic() < deadline:
                m = consumer.poll(0.5)
                if m is None or m.error():
                    continue
                got += 1
            assert got == 60, (group, got)
            consumer.commit(asynchronous=False)
        finally:
            consumer.close()
        # The committed offsets are read back by a new member through the coordinator.
        reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                           "enable.auto.commit": False})
        try:
            committed = reader.committed([TopicPartition(topic, p) for p in range(3)], timeout=30)
            assert sum(tp.offset for tp in committed) == 60, (group, committed)
        finally:
            reader.close()
