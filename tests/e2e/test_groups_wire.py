"""Group coordinator protocol details, with hand-encoded requests."""

import time

import pytest

import kafka_wire as kw
from conftest import unique_topic
from group_helpers import (
    MEMBER_ID_REQUIRED,
    REBALANCE_IN_PROGRESS,
    UNKNOWN_MEMBER_ID,
    coordinator_conn,
    find_coordinator_v0,
    find_coordinator_v1,
    group_broker_settings,
    heartbeat_v0,
    join_group,
    join_with_member_id,
    leave_group_v0,
    offset_commit_v2,
    offset_fetch,
    run_in_thread,
    sync_group,
)


@pytest.fixture
def gbroker(make_broker):
    return make_broker(settings=group_broker_settings())


def test_find_coordinator_is_this_broker(gbroker):
    with gbroker.conn() as c:
        r0 = find_coordinator_v0(c, "some-group")
        r1 = find_coordinator_v1(c, "some-group")
        md = kw.metadata_v1(c, [])
    assert r0["error_code"] == 0, r0
    assert r1["error_code"] == 0, r1
    brokers = {b["node_id"]: (b["host"], b["port"]) for b in md["brokers"]}
    assert r0["node_id"] in brokers and r1["node_id"] == r0["node_id"]
    assert (r0["host"], r0["port"]) == brokers[r0["node_id"]]
    assert (r1["host"], r1["port"]) == brokers[r0["node_id"]]
    assert r0["port"] == gbroker.port


@pytest.mark.parametrize("version", [4, 5])
def test_join_v4_plus_requires_member_id(gbroker, version):
    group = unique_topic("g")
    with coordinator_conn(gbroker, group) as c:
        r = join_group(c, version, group, member_id="")
        assert r["error_code"] == MEMBER_ID_REQUIRED, r
        mid = r["member_id"]
        assert mid, "MEMBER_ID_REQUIRED must carry the assigned member id"
        assert r["generation_id"] == -1
        r2 = join_group(c, version, group, member_id=mid)
        assert r2["error_code"] == 0, r2
        assert r2["member_id"] == mid
        assert r2["leader"] == mid
        assert r2["generation_id"] >= 1
        assert r2["protocol_name"] == "range"
        assert [(m["member_id"], m["metadata"]) for m in r2["members"]] == [(mid, b"meta")]
        s = sync_group(c, 2, group, r2["generation_id"], mid, [(mid, b"my-assignment")])
        assert s == {"throttle": s["throttle"], "error_code": 0, "assignment": b"my-assignment"}
        assert heartbeat_v0(c, group, r2["generation_id"], mid) == 0
        assert leave_group_v0(c, group, mid) == 0
        # after leaving, the member is unknown
        assert heartbeat_v0(c, group, r2["generation_id"], mid) in (UNKNOWN_MEMBER_ID, 22)


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_join_v0_to_v3_without_member_id_is_accepted(gbroker, version):
    group = unique_topic("g")
    with coordinator_conn(gbroker, group) as c:
        r = join_group(c, version, group, member_id="",
                       protocols=[("roundrobin", b"rr"), ("range", b"rg")])
        assert r["error_code"] == 0, r
        assert r["member_id"]
        assert r["leader"] == r["member_id"]
        assert r["generation_id"] >= 1
        assert r["protocol_name"] == "roundrobin"  # first of the member's preferences
        assert [(m["member_id"], m["metadata"]) for m in r["members"]] == [
            (r["member_id"], b"rr")]
        s = sync_group(c, 0, group, r["generation_id"], r["member_id"],
                       [(r["member_id"], b"\x00\x01")])
        assert s["error_code"] == 0 and s["assignment"] == b"\x00\x01"
        assert leave_group_v0(c, group, r["member_id"]) == 0


@pytest.mark.parametrize("version", [1, 2, 3, 5])
def test_offset_fetch_unknown_group(gbroker, version):
    group = unique_topic("nobody")
    topic = unique_topic("t")
    with gbroker.conn() as c:
        kw.wait_for_topic(c, topic)  # auto-create, 3 partitions
    with coordinator_conn(gbroker, group) as c:
        r = offset_fetch(c, version, group, {topic: [0, 1, 2]})
    assert r.get("error_code", 0) == 0, r
    assert r["topics"] == {topic: {p: (-1, r["topics"][topic][p][1], 0) for p in (0, 1, 2)}}, r
    assert all(r["topics"][topic][p][1] in ("", None) for p in (0, 1, 2))


def test_offset_commit_and_fetch_wire_round_trip(gbroker):
    group = unique_topic("g")
    topic = unique_topic("t")
    with gbroker.conn() as c:
        kw.wait_for_topic(c, topic)
    with coordinator_conn(gbroker, group) as c:
        # standalone (simple) commit: generation -1, no member id
        res = offset_commit_v2(c, group, -1, "", topic, {0: (7, "seven"), 2: (0, None)})
        assert res == {topic: {0: 0, 2: 0}}, res
        r = offset_fetch(c, 3, group, {topic: [0, 1, 2]})
        assert r["error_code"] == 0
        got = r["topics"][topic]
        assert got[0] == (7, "seven", 0)
        assert got[1][0] == -1 and got[1][2] == 0
        assert got[2][0] == 0 and got[2][2] == 0
        # v2+: null topics = everything committed for the group
        r = offset_fetch(c, 2, group, None)
        assert r["error_code"] == 0
        assert {p: v[0] for p, v in r["topics"][topic].items()} == {0: 7, 2: 0}


@pytest.mark.timeout(60)
def test_sync_group_follower_gets_its_assignment(gbroker):
    group = unique_topic("g")
    c1 = coordinator_conn(gbroker, group)
    c2 = coordinator_conn(gbroker, group)
    try:
        # member 1 alone: generation N, leader
        r1 = join_with_member_id(c1, 4, group)
        assert r1["error_code"] == 0, r1
        m1 = r1["member_id"]
        s1 = sync_group(c1, 2, group, r1["generation_id"], m1, [(m1, b"all")])
        assert s1["error_code"] == 0 and s1["assignment"] == b"all"

        # member 2 joins: its JoinGroup parks until member 1 rejoins.
        first = join_group(c2, 4, group, member_id="")
        assert first["error_code"] == MEMBER_ID_REQUIRED
        m2 = first["member_id"]
        fut2 = run_in_thread(join_group, c2, 4, group, member_id=m2)
        # member 1 learns about the rebalance via its heartbeat
        deadline = time.monotonic() + 15
        hb = None
        while time.monotonic() < deadline:
            hb = heartbeat_v0(c1, group, r1["generation_id"], m1)
            if hb == REBALANCE_IN_PROGRESS:
                break
            assert hb == 0, hb
            time.sleep(0.1)
        assert hb == REBALANCE_IN_PROGRESS
        j1 = join_group(c1, 4, group, member_id=m1)
        j2 = fut2(timeout=30)
        assert j1["error_code"] == 0 and j2["error_code"] == 0, (j1, j2)
        assert j1["generation_id"] == j2["generation_id"] > r1["generation_id"]
        assert j1["leader"] == j2["leader"]
        assert {j1["member_id"], j2["member_id"]} == {m1, m2}
        leader_conn, leader, follower_conn, follower = (
            (c1, j1, c2, j2) if j1["leader"] == m1 else (c2, j2, c1, j1))
        assert sorted(m["member_id"] for m in leader["members"]) == sorted([m1, m2])
        assert follower["members"] == []  # only the leader gets the member list
        gen = j1["generation_id"]

        # follower syncs first (parks), then the leader hands out assignments
        fut_f = run_in_thread(sync_group, follower_conn, 2, group, gen,
                              follower["member_id"], [])
        s_leader = sync_group(leader_conn, 2, group, gen, leader["member_id"],
                              [(leader["member_id"], b"L-part"),
                               (follower["member_id"], b"F-part")])
        s_follower = fut_f(timeout=30)
        assert s_leader["error_code"] == 0 and s_leader["assignment"] == b"L-part"
        assert s_follower["error_code"] == 0 and s_follower["assignment"] == b"F-part"

        # a follower syncing after the leader gets its assignment immediately
        s_again = sync_group(follower_conn, 2, group, gen, follower["member_id"], [])
        assert s_again["error_code"] == 0 and s_again["assignment"] == b"F-part"
        assert heartbeat_v0(c1, group, gen, m1) == 0
        assert heartbeat_v0(c2, group, gen, m2) == 0
    finally:
        c1.close()
        c2.close()


@pytest.mark.timeout(60)
def test_sync_group_member_left_out_gets_empty_assignment(gbroker):
    group = unique_topic("g")
    c1 = coordinator_conn(gbroker, group)
    c2 = coordinator_conn(gbroker, group)
    try:
        fut1 = run_in_thread(join_with_member_id, c1, 3, group)
        fut2 = run_in_thread(join_with_member_id, c2, 3, group)
        j1, j2 = fut1(timeout=30), fut2(timeout=30)
        assert j1["error_code"] == 0 and j2["error_code"] == 0, (j1, j2)
        assert j1["generation_id"] == j2["generation_id"]
        leader_conn, leader, follower_conn, follower = (
            (c1, j1, c2, j2) if j1["leader"] == j1["member_id"] else (c2, j2, c1, j1))
        assert follower["leader"] == leader["member_id"]
        gen = leader["generation_id"]
        fut_f = run_in_thread(sync_group, follower_conn, 1, group, gen, follower["member_id"], [])
        # the leader assigns nothing to the follower
        s_leader = sync_group(leader_conn, 1, group, gen, leader["member_id"],
                              [(leader["member_id"], b"everything")])
        s_follower = fut_f(timeout=30)
        assert s_leader["error_code"] == 0 and s_leader["assignment"] == b"everything"
        assert s_follower["error_code"] == 0
        assert s_follower["assignment"] in (b"", None)
    finally:
        c1.close()
        c2.close()
