"""Consumer groups with confluent-kafka (librdkafka) against Sluice.

Group members whose death is part of the scenario run as child processes
(group_helpers.GroupConsumerProc) so that they can be SIGKILLed; the others
run in-process.
"""

import time

import pytest
from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka import ConsumerGroupTopicPartitions

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
    p = GroupConsumerProc(tmp_root, broker.bootstrap, group, topic, name, **kw)
    procs.append(p)
    return p


def group_consumer(bootstrap, group, **extra):
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 100,
    }
    conf.update(extra)
    return Consumer(conf)


def subscribe_and_wait(c, topic, n_parts, timeout=30):
    """Subscribe and poll until the assignment covers n_parts partitions.
    Messages polled meanwhile are returned (already consumed!)."""
    assigned = []
    c.subscribe([topic], on_assign=lambda cons, parts: assigned.append(
        sorted(p.partition for p in parts)))
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None:
            assert not m.error(), m.error()
            got.append(m)
        if assigned and len(c.assignment()) == n_parts:
            return got
    raise AssertionError(f"no full assignment within {timeout}s: callbacks={assigned} "
                         f"assignment={c.assignment()}")


def consume_until(c, pred, timeout=30):
    """Poll messages into a list until pred(list) holds."""
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not pred(out):
        for m in c.consume(num_messages=200, timeout=0.2):
            assert not m.error(), m.error()
            out.append(m)
    assert pred(out), f"condition not met after {timeout}s with {len(out)} messages"
    return out


def committed_offsets(bootstrap, group, topic, parts=PARTS):
    """committed() from a consumer that never joins the group."""
    c = group_consumer(bootstrap, group)
    try:
        res = c.committed([TopicPartition(topic, p) for p in parts], timeout=20)
        return {tp.partition: tp.offset for tp in res}
    finally:
        c.close()


# ---------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_two_members_kill_one_survivor_takes_over(make_broker, tmp_root, procs):
    broker = make_broker(settings=group_broker_settings())
    topic = unique_topic("grp")
    group = unique_topic("g")
    create_topic(broker.bootstrap, topic, partitions=6)

    a = spawn(procs, tmp_root, broker, group, topic, "member-a")
    b = spawn(procs, tmp_root, broker, group, topic, "member-b")
    owned_a, owned_b = wait_stable_assignment([a, b], PARTS, timeout=60)
    assert not owned_a & owned_b and owned_a | owned_b == set(PARTS)
    # produce only now, so that each partition is consumed by its owner alone
    produced1 = confluent_produce_keyed(broker.bootstrap, topic, 600)
    ends1 = end_offsets(produced1, PARTS)
    assert all(ends1[p] > 0 for p in PARTS), ends1  # 50 distinct keys hit every partition

    # Both consume everything that's there and commit it.
    wait_until(lambda: set(a.consumed()) | set(b.consumed()) == set(produced1), 60,
               "the first 600 messages consumed by the group", [a, b])
    wait_until(lambda: all(a.committed().get(p) == ends1[p] for p in owned_a)
               and all(b.committed().get(p) == ends1[p] for p in owned_b), 30,
               "commits of the end offsets", [a, b])
    for (p, o), kv in {**a.consumed(), **b.consumed()}.items():
        assert produced1[(p, o)] == kv, (p, o)
    # every partition was consumed by its owner only (the assignment was stable)
    assert {p for p, _ in a.consumed()} == owned_a
    assert {p for p, _ in b.consumed()} == owned_b
    assert committed_offsets(broker.bootstrap, group, topic) == ends1

    # SIGKILL member b: no LeaveGroup, the coordinator must expire it.
    b_events_before = len(b.snapshot())
    b.kill()
    a_mark = len(a.snapshot())
    produced2 = confluent_produce_keyed(broker.bootstrap, topic, 600, start=600)
    assert not set(produced2) & set(produced1)

    # Within the session timeout (6 s) + rebalance + slack, a owns all six.
    wait_until(lambda: a.owned() == set(PARTS), 40, "survivor owning all 6 partitions", [a])
    wait_until(lambda: set(produced2) <= set(a.consumed()), 60,
               "survivor consuming all 600 new messages", [a])
    assert len(b.snapshot()) == b_events_before  # b really is dead

    consumed_a = a.consumed()
    for key in produced2:
        assert consumed_a[key] == produced2[key], key
    # The partitions taken over from b resumed exactly at b's committed offsets.
    new_msgs = a.messages(since=a_mark)
    for p in owned_b:
        offs = [m["o"] for m in new_msgs if m["p"] == p]
        assert offs, f"survivor consumed nothing from taken-over partition {p}"
        assert min(offs) == ends1[p], (p, min(offs), ends1[p])
        assert sorted(set(offs)) == list(range(ends1[p], max(offs) + 1))
    # No loss anywhere: every produced message was consumed by someone.
    everything = {**produced1, **produced2}
    assert set(everything) <= set(a.consumed()) | set(b.consumed())

    ends2 = end_offsets(everything, PARTS)
    wait_until(lambda: all(a.committed().get(p) == ends2[p] for p in PARTS), 30,
               "survivor committing the final offsets", [a])
    a.stop()
    assert not a.alive()
    assert committed_offsets(broker.bootstrap, group, topic) == ends2
    broker.assert_alive()


@pytest.mark.timeout(180)
def test_second_group_receives_everything_independently(make_broker, tmp_root, procs):
    broker = make_broker(settings=group_broker_settings())
    topic = unique_topic("grp")
    create_topic(broker.bootstrap, topic, partitions=6)
    produced = confluent_produce_keyed(broker.bootstrap, topic, 1200)
    ends = end_offsets(produced, PARTS)

    g1, g2 = unique_topic("g1"), unique_topic("g2")
    # group 1: two members sharing the work
    a = spawn(procs, tmp_root, broker, g1, topic, "g1-a")
    b = spawn(procs, tmp_root, broker, g1, topic, "g1-b")
    wait_stable_assignment([a, b], PARTS, timeout=60)
    wait_until(lambda: set(a.consumed()) | set(b.consumed()) == set(produced), 60,
               "group 1 consuming all 1200", [a, b])
    wait_until(lambda: committed_offsets(broker.bootstrap, g1, topic) == ends, 30,
               "group 1 commits", [a, b])

    # group 2 starts after group 1 committed everything and still gets all of it
    c = spawn(procs, tmp_root, broker, g2, topic, "g2-a")
    wait_until(lambda: set(c.consumed()) == set(produced), 60, "group 2 consuming all 1200", [c])
    assert c.owned() == set(PARTS)
    got = c.consumed()
    assert len(got) == 1200
    for key, kv in produced.items():
        assert got[key] == kv
    wait_until(lambda: committed_offsets(broker.bootstrap, g2, topic) == ends, 30,
               "group 2 commits", [c])
    # group 1's members did not receive anything again because of group 2
    assert set(a.consumed()) | set(b.consumed()) == set(produced)
    assert committed_offsets(broker.bootstrap, g1, topic) == ends
    for p in (a, b, c):
        p.stop()


@pytest.mark.timeout(180)
def test_committed_offsets_survive_broker_sigkill(make_broker):
    broker = make_broker(settings=group_broker_settings())
    topic = unique_topic("grp")
    group = unique_topic("g")
    create_topic(broker.bootstrap, topic, partitions=6)
    produced = confluent_produce_keyed(broker.bootstrap, topic, 600)
    ends = end_offsets(produced, PARTS)
    target = {p: ends[p] // 2 for p in PARTS}

    c = group_consumer(broker.bootstrap, group)
    try:
        got = subscribe_and_wait(c, topic, 6)
        got += consume_until(c, lambda out: len(got) + len(out) >= 600)
        assert {(m.partition(), m.offset()) for m in got} == set(produced)
        # Commit "half way" (synchronously) with metadata.
        res = c.commit(offsets=[TopicPartition(topic, p, target[p], metadata=f"m{p}")
                                for p in PARTS], asynchronous=False)
        assert all(tp.error is None for tp in res), res
    finally:
        c.close()

    broker.kill()  # SIGKILL
    broker.restart()

    c2 = group_consumer(broker.bootstrap, group)
    try:
        res = c2.committed([TopicPartition(topic, p) for p in PARTS], timeout=30)
        assert {tp.partition: tp.offset for tp in res} == target
        assert {tp.partition: tp.metadata for tp in res} == {p: f"m{p}" for p in PARTS}
        rest = sum(ends[p] - target[p] for p in PARTS)
        msgs = subscribe_and_wait(c2, topic, 6)
        msgs += consume_until(c2, lambda out: len(msgs) + len(out) >= rest)
        first = {}
        for m in msgs:
            first.setdefault(m.partition(), m.offset())
            assert produced[(m.partition(), m.offset())] == (m.key().decode(), m.value().decode())
        assert first == {p: target[p] for p in PARTS if target[p] < ends[p]}
        assert {(m.partition(), m.offset()) for m in msgs} == {
            (p, o) for (p, o) in produced if o >= target[p]}
        assert len(msgs) == rest, "messages re-delivered below the committed offset"
    finally:
        c2.close()
    broker.assert_alive()


@pytest.mark.timeout(180)
def test_cooperative_sticky_third_member_only_moves_partitions(make_broker, tmp_root, procs):
    broker = make_broker(settings=group_broker_settings())
    topic = unique_topic("coop")
    group = unique_topic("g")
    create_topic(broker.bootstrap, topic, partitions=6)
    confluent_produce_keyed(broker.bootstrap, topic, 120)

    kw = {"strategy": "cooperative-sticky"}
    a = spawn(procs, tmp_root, broker, group, topic, "coop-a", **kw)
    wait_stable_assignment([a], PARTS, timeout=60)
    b = spawn(procs, tmp_root, broker, group, topic, "coop-b", **kw)
    before_ab = wait_stable_assignment([a, b], PARTS, timeout=60)
    assert [len(o) for o in before_ab] == [3, 3]
    mark = {p.name: len(p.snapshot()) for p in (a, b)}

    c = spawn(procs, tmp_root, broker, group, topic, "coop-c", **kw)
    after = wait_stable_assignment([a, b, c], PARTS, timeout=60)
    assert sorted(len(o) for o in after) == [2, 2, 2], after

    for p, owned_before, owned_after in ((a, before_ab[0], after[0]),
                                         (b, before_ab[1], after[1])):
        evs = p.snapshot()
        assert all(e.get("protocol") in (None, "COOPERATIVE")
                   for e in evs if e["ev"] in ("assign", "revoke")), p.describe()
        assert not [e for e in evs if e["ev"] == "lost"], p.describe()
        # Replay this member's callbacks since the third joined: ownership
        # never dropped to nothing, and only the moved partitions were revoked.
        owned = set(owned_before)
        revoked = set()
        for e in evs[mark[p.name]:]:
            if e["ev"] == "revoke":
                assert set(e["parts"]) <= owned
                assert set(e["parts"]) != owned, f"{p.name} had all partitions revoked: {e}"
                owned -= set(e["parts"])
                revoked |= set(e["parts"])
            elif e["ev"] == "assign":
                owned |= set(e["parts"])
        assert owned == owned_after
        assert revoked == owned_before - owned_after, (p.name, revoked, owned_before, owned_after)
        assert owned_after <= owned_before  # sticky: kept partitions, gained none
    # the first rebalance (a alone -> a, b) also only revoked what moved to b
    evs_a = a.snapshot()[:mark["coop-a"]]
    revokes = [set(e["parts"]) for e in evs_a if e["ev"] == "revoke"]
    assert revokes and all(len(r) < 6 for r in revokes), evs_a
    for p in (a, b, c):
        p.stop()


@pytest.mark.parametrize("strategy", ["range", "roundrobin"])
def test_eager_assignors_two_members(make_broker, tmp_root, procs, strategy):
    broker = make_broker(settings=group_broker_settings())
    topic = unique_topic(strategy)
    group = unique_topic("g")
    create_topic(broker.bootstrap, topic, partitions=6)
    produced = confluent_produce_keyed(broker.bootstrap, topic, 120)

    a = spawn(procs, tmp_root, broker, group, topic, f"{strategy}-a", strategy=strategy)
    b = spawn(procs, tmp_root, broker, group, topic, f"{strategy}-b", strategy=strategy)
    owned = wait_stable_assignment([a, b], PARTS, timeout=60)
    assert sorted(len(o) for o in owned) == [3, 3], owned
    if strategy == "range":
        assert sorted(sorted(o) for o in owned) == [[0, 1, 2], [3, 4, 5]]
    else:
        assert sorted(sorted(o) for o in owned) == [[0, 2, 4], [1, 3, 5]]
    for p in (a, b):
        assert all(e.get("protocol") == "EAGER" for e in p.snapshot()
                   if e["ev"] in ("assign", "revoke")), p.describe()
    wait_until(lambda: set(a.consumed()) | set(b.consumed()) == set(produced), 60,
               "all messages consumed", [a, b])
    for p in (a, b):
        p.stop()


def test_offset_commit_metadata_round_trip(make_broker):
    broker = make_broker(settings=group_broker_settings())
    topic = unique_topic("meta")
    group = unique_topic("g")
    create_topic(broker.bootstrap, topic, partitions=2)
    confluent_produce_keyed(broker.bootstrap, topic, 20)

    c = group_consumer(broker.bootstrap, group)
    try:
        subscribe_and_wait(c, topic, 2)
        res = c.commit(offsets=[TopicPartition(topic, 0, 3, metadata="hello-meta"),
                                TopicPartition(topic, 1, 1, metadata="")],
                       asynchronous=False)
        assert all(tp.error is None for tp in res), res
        got = c.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=20)
        by_p = {tp.partition: tp for tp in got}
        assert by_p[0].offset == 3 and by_p[0].metadata == "hello-meta"
        assert by_p[1].offset == 1 and by_p[1].metadata in ("", None)
        # overwrite keeps the newest metadata
        c.commit(offsets=[TopicPartition(topic, 0, 5, metadata="second \u2603")],
                 asynchronous=False)
        got = c.committed([TopicPartition(topic, 0)], timeout=20)
        assert (got[0].offset, got[0].metadata) == (5, "second \u2603")
    finally:
        c.close()
    # and from another client instance (no membership)
    c3 = group_consumer(broker.bootstrap, group)
    try:
        got = c3.committed([TopicPartition(topic, 0)], timeout=20)
        assert (got[0].offset, got[0].metadata) == (5, "second \u2603")
    finally:
        c3.close()


@pytest.mark.timeout(180)
def test_admin_group_apis(make_broker):
    broker = make_broker(settings=group_broker_settings())
    topic = unique_topic("adm")
    group = unique_topic("g-admin")
    create_topic(broker.bootstrap, topic, partitions=3)
    produced = confluent_produce_keyed(broker.bootstrap, topic, 30)
    ends = end_offsets(produced, [0, 1, 2])
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})

    c = group_consumer(broker.bootstrap, group, **{"client.id": "admin-test-member"})
    try:
        got = subscribe_and_wait(c, topic, 3)
        got += consume_until(c, lambda out: len(got) + len(out) >= 30)
        c.commit(asynchronous=False)

        listing = admin.list_consumer_groups(request_timeout=20).result(timeout=30)
        assert not listing.errors, listing.errors
        mine = [g for g in listing.valid if g.group_id == group]
        assert len(mine) == 1, [g.group_id for g in listing.valid]
        assert not mine[0].is_simple_consumer_group
        assert mine[0].state == ConsumerGroupState.STABLE

        desc = admin.describe_consumer_groups([group], request_timeout=20)[group].result(timeout=30)
        assert desc.group_id == group
        assert desc.state == ConsumerGroupState.STABLE
        assert not desc.is_simple_consumer_group
        assert desc.partition_assignor == "range"
        assert len(desc.members) == 1
        m = desc.members[0]
        assert m.client_id == "admin-test-member"
        assert m.member_id
        assert sorted((tp.topic, tp.partition) for tp in m.assignment.topic_partitions) == [
            (topic, 0), (topic, 1), (topic, 2)]

        # deleting a group with a live member fails (NON_EMPTY_GROUP)
        with pytest.raises(KafkaException) as ei:
            admin.delete_consumer_groups([group], request_timeout=20)[group].result(timeout=30)
        assert "NON_EMPTY" in str(ei.value).upper().replace(" ", "_"), ei.value
    finally:
        c.close()

    offs = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=20)[group].result(timeout=30)
    assert offs.group_id == group
    assert {(tp.topic, tp.partition): tp.offset for tp in offs.topic_partitions} == {
        (topic, p): ends[p] for p in (0, 1, 2)}

    # After close() the group is empty; describe says so, delete works.
    def empty():
        d = admin.describe_consumer_groups([group], request_timeout=20)[group].result(timeout=30)
        return d if d.state == ConsumerGroupState.EMPTY else None
    d = wait_until(empty, 30, "group to become Empty")
    assert d.members == []

    assert admin.delete_consumer_groups([group], request_timeout=20)[group].result(timeout=30) \
        is None
    listing = admin.list_consumer_groups(request_timeout=20).result(timeout=30)
    assert group not in [g.group_id for g in listing.valid]
    # its offsets are gone too
    assert committed_offsets(broker.bootstrap, group, topic, [0, 1, 2]) == {
        0: -1001, 1: -1001, 2: -1001}
