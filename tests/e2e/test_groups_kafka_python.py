"""Consumer groups with kafka-python's group consumer against Sluice."""

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from conftest import create_topic, unique_topic
from group_helpers import (
    GroupConsumerProc,
    confluent_produce_keyed,
    end_offsets,
    group_broker_settings,
    wait_stable_assignment,
    wait_until,
)

PARTS = list(range(6))


@pytest.fixture
def procs():
    made = []
    yield made
    for p in made:
        p.cleanup()


def spawn(procs, tmp_root, broker, group, topic, name, **kw):
    p = GroupConsumerProc(tmp_root, broker.bootstrap, group, topic, name,
                          client="kafka-python", **kw)
    procs.append(p)
    return p


def kp_committed(bootstrap, group, topic, parts=PARTS):
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in parts}
    finally:
        c.close()


@pytest.mark.timeout(180)
def test_kafka_python_two_members_kill_one(make_broker, tmp_root, procs):
    broker = make_broker(settings=group_broker_settings())
    topic = unique_topic("kpg")
    group = unique_topic("g")
    create_topic(broker.bootstrap, topic, partitions=6)

    a = spawn(procs, tmp_root, broker, group, topic, "kp-a")
    b = spawn(procs, tmp_root, broker, group, topic, "kp-b")
    owned_a, owned_b = wait_stable_assignment([a, b], PARTS, timeout=60)
    assert not owned_a & owned_b and owned_a | owned_b == set(PARTS)
    # produce only now, so that each partition is consumed by its owner alone
    produced1 = confluent_produce_keyed(broker.bootstrap, topic, 600)
    ends1 = end_offsets(produced1, PARTS)
    assert all(ends1[p] > 0 for p in PARTS), ends1  # 50 distinct keys hit every partition

    wait_until(lambda: set(a.consumed()) | set(b.consumed()) == set(produced1), 60,
               "the first 600 messages consumed by the group", [a, b])
    wait_until(lambda: all(a.committed().get(p) == ends1[p] for p in owned_a)
               and all(b.committed().get(p) == ends1[p] for p in owned_b), 30,
               "commits of the end offsets", [a, b])
    for (p, o), kv in {**a.consumed(), **b.consumed()}.items():
        assert produced1[(p, o)] == kv, (p, o)
    assert {p for p, _ in a.consumed()} == owned_a
    assert {p for p, _ in b.consumed()} == owned_b
    assert kp_committed(broker.bootstrap, group, topic) == ends1

    b.kill()
    a_mark = len(a.snapshot())
    produced2 = confluent_produce_keyed(broker.bootstrap, topic, 600, start=600)

    wait_until(lambda: a.owned() == set(PARTS), 40, "survivor owning all 6 partitions", [a])
    wait_until(lambda: set(produced2) <= set(a.consumed()), 60,
               "survivor consuming all 600 new messages", [a])
    consumed_a = a.consumed()
    for key in produced2:
        assert consumed_a[key] == produced2[key], key
    new_msgs = a.messages(since=a_mark)
    for p in owned_b:
        offs = [m["o"] for m in new_msgs if m["p"] == p]
        assert offs and min(offs) == ends1[p], (p, offs[:5], ends1[p])
    everything = {**produced1, **produced2}
    assert set(everything) <= set(a.consumed()) | set(b.consumed())

    ends2 = end_offsets(everything, PARTS)
    wait_until(lambda: all(a.committed().get(p) == ends2[p] for p in PARTS), 30,
               "survivor committing the final offsets", [a])
    a.stop()
    assert kp_committed(broker.bootstrap, group, topic) == ends2
    broker.assert_alive()


def test_kafka_python_unknown_group_committed_is_none(make_broker):
    broker = make_broker(settings=group_broker_settings())
    topic = unique_topic("kpu")
    create_topic(broker.bootstrap, topic, partitions=2)
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=unique_topic("nobody"),
                      enable_auto_commit=False)
    try:
        assert c.committed(TopicPartition(topic, 0)) is None
        assert c.committed(TopicPartition(topic, 1)) is None
        # a topic that doesn't even exist: still nothing committed, no error
        assert c.committed(TopicPartition(unique_topic("ghost"), 0)) is None
    finally:
        c.close()


@pytest.mark.timeout(180)
def test_kafka_python_admin_groups(make_broker, tmp_root, procs):
    broker = make_broker(settings=group_broker_settings())
    topic = unique_topic("kpa")
    group = unique_topic("g-kpa")
    create_topic(broker.bootstrap, topic, partitions=6)
    produced = confluent_produce_keyed(broker.bootstrap, topic, 60)
    ends = end_offsets(produced, PARTS)

    a = spawn(procs, tmp_root, broker, group, topic, "kpa-a")
    b = spawn(procs, tmp_root, broker, group, topic, "kpa-b")
    owned = wait_stable_assignment([a, b], PARTS, timeout=60)
    wait_until(lambda: set(a.consumed()) | set(b.consumed()) == set(produced), 60,
               "all consumed", [a, b])

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        groups = admin.list_groups()
        ids = [g["group_id"] for g in groups]
        assert group in ids, groups
        mine = [g for g in groups if g["group_id"] == group][0]
        assert mine["protocol_type"] == "consumer"

        desc = admin.describe_groups([group])[group]
        assert desc["error"] is None, desc
        assert desc["group_state"] == "Stable", desc
        assert desc["protocol_type"] == "consumer"
        assert desc["protocol_data"] in ("range", "roundrobin", "sticky", "cooperative-sticky")
        members = desc["members"]
        assert sorted(m["client_id"] for m in members) == ["kpa-a", "kpa-b"]
        by_client = {}
        for m in members:
            asg = m["member_assignment"]
            parts = set()
            for t in asg["assigned_partitions"] if isinstance(asg, dict) else asg.assigned_partitions:
                tname = t["topic"] if isinstance(t, dict) else t.topic
                tparts = t["partitions"] if isinstance(t, dict) else t.partitions
                assert tname == topic
                parts |= set(tparts)
            by_client[m["client_id"]] = parts
        assert [by_client["kpa-a"], by_client["kpa-b"]] == owned

        wait_until(lambda: all(
            admin.list_group_offsets({group: None})[group].get(TopicPartition(topic, p))
            is not None and admin.list_group_offsets({group: None})[group][
                TopicPartition(topic, p)].offset == ends[p] for p in PARTS),
            30, "committed offsets via admin", [a, b])
    finally:
        admin.close()
        for p in (a, b):
            p.stop()

