"""Replicated partitions (issue 8, stage 3 and the failover of stage 4), seen as a Kafka user
sees them: real `sluice serve` processes, confluent-kafka idempotent acks=all producers,
SIGKILL and SIGSTOP.

Every producing test records each *acknowledged* record (delivery callback) and reads
everything back; `check_acked` (cluster_harness.py, unit-tested below with fabricated
violations) proves every acknowledged record is present exactly once at its acknowledged
offset, in acknowledgement order. Conditions are awaited with generous timeouts; no timing is
asserted.

Quorum arithmetic: every broker is a controller voter. Where two replica brokers must die
together, the cluster has five nodes so that three voters remain and the controller can still
fence the dead ones and elect leaders.
"""

import signal
import time

import pytest

import kafka_wire as kw
from cluster_harness import (
    NOT_ENOUGH_REPLICAS,
    SESSION_TIMEOUT_MS,
    AckedProducer,
    active_controller,
    bootstrap_of,
    broker_ids,
    check_acked,
    create_replicated_topic,
    find_coordinator,
    high_watermarks,
    leaders,
    partitions_v7,
    produce_one,
    read_all,
    scrape_metrics,
    start_cluster,
    wait_for,
    wait_full_isr,
)
from conftest import unique_topic

REPLICA_LAG_TIME_MAX_MS = 3000
# Broker settings of every cluster here: followers that stop fetching leave the ISR after
# 3 s (Kafka's default is 30 s); the session timeout (3 s) is set by start_cluster.
REPLICATION_SETTINGS = {
    "replica.lag.time.max.ms": REPLICA_LAG_TIME_MAX_MS,
    "offsets.topic.replication.factor": 3,
    "group.initial.rebalance.delay.ms": 100,
}
# Long enough for fencing + election + catch-up on a loaded 2-core machine.
FAILOVER_TIMEOUT_S = 90
MIN_ISR_2 = {"min.insync.replicas": "2"}


def isr(broker, topic, partition=0):
    return sorted(leaders(broker, topic)[partition]["isr"])


def leader_of(broker, topic, partition=0):
    return leaders(broker, topic)[partition]["leader"]


def valid_offsets(topic_partitions):
    """{partition: offset} of the TopicPartitions that have an offset (a partition nothing was
    committed for has a negative sentinel)."""
    return {tp.partition: tp.offset for tp in topic_partitions if tp.offset >= 0}


# --------------------------------------------------------------------------
# The checker itself
# --------------------------------------------------------------------------


def test_the_acks_checker_catches_lost_moved_duplicated_and_reordered_records():
    acked = [(b"a", b"v-0", 0, 0), (b"b", b"v-1", 1, 0), (b"a", b"v-2", 0, 1)]
    assert check_acked(acked, list(acked)) == []
    # Records that were never acknowledged may be present (a timed-out send that landed).
    assert check_acked(acked, acked + [(b"c", b"v-3", 1, 1)]) == []
    # Nothing acknowledged may be missing from what is read back.
    lost = check_acked(acked, acked[:2])
    assert len(lost) == 1 and "lost" in lost[0] and "v-2" in lost[0]
    # ... or be read at another offset (or partition) than its acknowledgement said.
    moved = check_acked(acked, acked[:2] + [(b"a", b"v-2", 0, 2)])
    assert len(moved) == 1 and "elsewhere" in moved[0]
    moved_partition = check_acked(acked, acked[:2] + [(b"a", b"v-2", 1, 1)])
    assert any("elsewhere" in v for v in moved_partition)
    # Idempotent producers: no record twice, not even one that was retried.
    duplicated = check_acked(acked, acked + [(b"a", b"v-0", 0, 2)])
    assert len(duplicated) == 1 and "read 2 times" in duplicated[0]
    # Two different records at one offset means two logs diverged.
    diverged = check_acked(acked, acked + [(b"x", b"w-9", 0, 1)])
    assert len(diverged) == 1 and "partition/offset (0, 1)" in diverged[0]
    # Acknowledgements of one partition must come in offset order.
    reordered = [acked[2], acked[0], acked[1]]
    out_of_order = check_acked(reordered, list(acked))
    assert any("reported after" in v for v in out_of_order)
    assert any("another order" in v for v in out_of_order)


# --------------------------------------------------------------------------
# 1. Leader failover under load
# --------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_acks_all_survives_sigkill_of_the_partition_leader(make_broker):
    # Five voters: at the end two replicas of partition 0 die and the quorum must survive.
    brokers = start_cluster(make_broker, size=5, settings=REPLICATION_SETTINGS)
    by_id = {b.node_id: b for b in brokers}
    topic = unique_topic("failover")
    partitions = 3
    create_replicated_topic(bootstrap_of(brokers), topic, partitions=partitions,
                            replication_factor=3, config=MIN_ISR_2)
    wait_full_isr(brokers, topic, partitions, 3)
    before = partitions_v7(brokers[0], topic)[0]
    victim = by_id[before["leader"]]
    survivors = [b for b in brokers if b is not victim]

    producer = AckedProducer(bootstrap_of(brokers), topic)
    producer.start_load()
    try:
        wait_for(lambda: producer.acked_count(0) >= 50, "acks on partition 0 before the kill",
                 timeout=60)
        victim.kill(signal.SIGKILL)

        # The controller fences the dead leader and elects another replica from the ISR, with
        # a higher leader epoch; every surviving broker says so.
        def new_leader(b):
            p = partitions_v7(b, topic)[0]
            return p if p["leader"] not in (-1, victim.node_id) else None

        after = wait_for(lambda: new_leader(survivors[0]), "a new leader of partition 0",
                         timeout=FAILOVER_TIMEOUT_S)
        assert after["leader"] in set(before["replicas"]) - {victim.node_id}
        assert after["leader_epoch"] > before["leader_epoch"], (before, after)
        wait_for(lambda: new_leader(survivors[1]), "the new leader on the other survivor")

        # The producer finds the new leader in metadata and carries on.
        mark = producer.sent
        wait_for(lambda: producer.acked_from(mark, partition=0) >= 50,
                 "acks on partition 0 from the new leader", timeout=FAILOVER_TIMEOUT_S)
    finally:
        remaining = producer.stop_load()
    assert remaining == 0, f"{remaining} records neither acknowledged nor failed"
    acked, errors = producer.snapshot()
    assert errors == [], errors[:5]
    assert len(acked) == producer.sent

    # The killed broker comes back as a follower, catches up and rejoins every ISR.
    victim.start(wait=True)
    wait_full_isr(brokers, topic, partitions, 3, timeout=FAILOVER_TIMEOUT_S)
    consumed = read_all(bootstrap_of(brokers), topic, list(range(partitions)))
    assert check_acked(acked, consumed) == []

    # The restarted broker's copy of partition 0 is the leader's copy: whatever it had
    # appended past what the others replicated before it died is gone. Leave it the only
    # in-sync replica alive (kill the other replicas, the leader last) and read from it.
    current = leaders(victim, topic)[0]
    others = sorted((r for r in current["replicas"] if r != victim.node_id),
                    key=lambda r: r == current["leader"])
    for r in others:
        by_id[r].kill(signal.SIGKILL)
        wait_for(lambda r=r: r not in isr(victim, topic) and leader_of(victim, topic) != r,
                 f"broker {r} out of the ISR of partition 0", timeout=FAILOVER_TIMEOUT_S)
    assert leader_of(victim, topic) == victim.node_id
    assert read_all(victim.bootstrap, topic, [0]) == [rec for rec in consumed if rec[2] == 0]


@pytest.mark.timeout(240)
def test_a_restarted_leader_drops_the_records_only_it_had(make_broker):
    # Sessions and lag limits of 10 s: the followers are stopped for a few seconds below and
    # must stay in the ISR meanwhile. Five voters: at the end two replicas die.
    settings = dict(REPLICATION_SETTINGS, **{"broker.session.timeout.ms": 10000,
                                             "replica.lag.time.max.ms": 10000,
                                             "replica.fetch.wait.max.ms": 100})
    brokers = start_cluster(make_broker, size=5, settings=settings)
    by_id = {b.node_id: b for b in brokers}
    topic = unique_topic("diverge")
    create_replicated_topic(bootstrap_of(brokers), topic, partitions=1, replication_factor=3,
                            config=MIN_ISR_2)
    wait_full_isr(brokers, topic, 1, 3)
    before = partitions_v7(brokers[0], topic)[0]
    old_leader = by_id[before["leader"]]
    followers = [by_id[r] for r in before["replicas"] if r != old_leader.node_id]

    first = AckedProducer(bootstrap_of(brokers), topic, tag="first")
    first.produce(100)
    assert first.flush() == 0
    acked_first, errors = first.snapshot()
    assert errors == [] and len(acked_first) == 100

    # With the followers stopped, an acks=1 write lands on the leader alone; then it dies.
    # A fetch a follower sent just before it stopped waits at most replica.fetch.wait.max.ms
    # (100 ms) for data: let those be answered (empty) first, or the tail would reach the
    # follower's socket buffer and be appended after SIGCONT.
    for f in followers:
        f.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2)
        tail = kw.encode_batch([(b"k", f"only on the old leader {i}".encode())
                                for i in range(5)])
        with kw.Conn("127.0.0.1", old_leader.port) as c:
            response = kw.produce_v3(c, topic, 0, tail, acks=1)
        assert response["error_code"] == 0 and response["base_offset"] == 100, response
        old_leader.kill(signal.SIGKILL)
    finally:
        for f in followers:
            f.proc.send_signal(signal.SIGCONT)

    after = wait_for(lambda: (lambda p: p if p["leader"] in {f.node_id for f in followers}
                              else None)(partitions_v7(followers[0], topic)[0]),
                     "a follower leads", timeout=FAILOVER_TIMEOUT_S)
    assert after["leader_epoch"] > before["leader_epoch"]
    second = AckedProducer(bootstrap_of(brokers), topic, tag="second")
    second.produce(100)
    assert second.flush() == 0
    acked_second, errors = second.snapshot()
    assert errors == [] and len(acked_second) == 100
    # The new leader never had the tail: its log goes on from offset 100.
    assert min(offset for _, _, _, offset in acked_second) == 100
    consumed = read_all(bootstrap_of(brokers), topic, [0])
    assert check_acked(acked_first + acked_second, consumed) == []
    assert not any(v.startswith(b"only on the old leader") for _, v, _, _ in consumed)

    # The old leader returns as a follower, truncates its tail and catches up. Leave it the
    # only in-sync replica alive and read its copy: the same records at the same offsets.
    old_leader.start(wait=True)
    wait_full_isr(brokers, topic, 1, 3, timeout=FAILOVER_TIMEOUT_S)
    current = leaders(old_leader, topic)[0]
    others = sorted((f.node_id for f in followers), key=lambda r: r == current["leader"])
    for r in others:
        by_id[r].kill(signal.SIGKILL)
        wait_for(lambda r=r: r not in isr(old_leader, topic)
                 and leader_of(old_leader, topic) != r,
                 f"broker {r} out of the ISR", timeout=FAILOVER_TIMEOUT_S)
    assert leader_of(old_leader, topic) == old_leader.node_id
    assert read_all(old_leader.bootstrap, topic, [0]) == consumed


# --------------------------------------------------------------------------
# 2. ISR shrink and expand
# --------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_isr_shrinks_when_a_follower_stops_and_grows_when_it_catches_up(make_broker):
    # Five voters: at the end two of the three replicas die and the quorum must survive.
    brokers = start_cluster(make_broker, size=5, settings=REPLICATION_SETTINGS)
    by_id = {b.node_id: b for b in brokers}
    topic = unique_topic("isr")
    create_replicated_topic(bootstrap_of(brokers), topic, partitions=1, replication_factor=3,
                            config=MIN_ISR_2)
    placement = wait_full_isr(brokers, topic, 1, 3)[0]
    leader_id = placement["leader"]
    follower_id, other_id = [r for r in placement["replicas"] if r != leader_id]
    leader, follower, other = by_id[leader_id], by_id[follower_id], by_id[other_id]
    epoch_before = partitions_v7(leader, topic)[0]["leader_epoch"]

    producer = AckedProducer(bootstrap_of(brokers), topic)
    producer.start_load()
    try:
        wait_for(lambda: producer.acked_count() >= 50, "acks before the follower stops",
                 timeout=60)
        follower.proc.send_signal(signal.SIGSTOP)
        try:
            # Out of the ISR: either it lagged for replica.lag.time.max.ms or its session
            # expired and the controller fenced it.
            wait_for(lambda: isr(leader, topic) == sorted([leader_id, other_id]),
                     "the stopped follower out of the ISR",
                     timeout=FAILOVER_TIMEOUT_S)
            # ISR 2 >= min.insync.replicas 2: acks=all writes keep succeeding.
            mark = producer.sent
            wait_for(lambda: producer.acked_from(mark) >= 50, "acks with the ISR shrunk to 2",
                     timeout=60)
            response = produce_one(leader, topic, 0, b"raw write with ISR 2")
            assert response["error_code"] == 0, response
        finally:
            follower.proc.send_signal(signal.SIGCONT)
        # It fetches what it missed and the leader takes it back into the ISR.
        wait_for(lambda: isr(leader, topic) == sorted(placement["replicas"]),
                 "the follower back in the ISR",
                 timeout=FAILOVER_TIMEOUT_S)
        mark = producer.sent
        wait_for(lambda: producer.acked_from(mark) >= 50, "acks with the full ISR again",
                 timeout=60)
    finally:
        remaining = producer.stop_load()
    assert remaining == 0
    acked, errors = producer.snapshot()
    assert errors == [], errors[:5]

    # Leave the caught-up follower as the only in-sync replica alive: kill the third replica,
    # then the leader. The caught-up broker must lead and serve every acknowledged record.
    other.kill(signal.SIGKILL)
    wait_for(lambda: isr(leader, topic) == sorted([leader_id, follower_id]),
             "the killed replica out of the ISR",
             timeout=FAILOVER_TIMEOUT_S)
    leader.kill(signal.SIGKILL)
    wait_for(lambda: leader_of(follower, topic) == follower_id, "the caught-up follower leads",
             timeout=FAILOVER_TIMEOUT_S)
    assert partitions_v7(follower, topic)[0]["leader_epoch"] > epoch_before
    consumed = read_all(follower.bootstrap, topic, [0])
    assert check_acked(acked, consumed) == []
    assert b"raw write with ISR 2" in {value for _, value, _, _ in consumed}


# --------------------------------------------------------------------------
# 3. Below min.insync.replicas
# --------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_acks_all_fails_with_not_enough_replicas_when_two_of_three_replicas_are_down(
        make_broker):
    from confluent_kafka import KafkaError

    # Five voters, the topic assigned to brokers 1-3: killing two replicas leaves a quorum of
    # three that fences them, so the partition's ISR really shrinks to the leader alone.
    brokers = start_cluster(make_broker, size=5, settings=REPLICATION_SETTINGS)
    by_id = {b.node_id: b for b in brokers}
    topic = unique_topic("min-isr")
    create_replicated_topic(bootstrap_of(brokers), topic, replica_assignment=[[1, 2, 3]],
                            config=MIN_ISR_2)
    placement = wait_full_isr(brokers, topic, 1, 3)[0]
    assert (placement["leader"], placement["replicas"]) == (1, [1, 2, 3]), placement
    leader_id = placement["leader"]
    followers = [r for r in placement["replicas"] if r != leader_id]
    leader = by_id[leader_id]

    def alive():
        return bootstrap_of(brokers)

    first = AckedProducer(alive(), topic, tag="before")
    first.produce(100)
    assert first.flush() == 0
    acked_before, errors = first.snapshot()
    assert errors == [] and len(acked_before) == 100

    for f in followers:
        by_id[f].kill(signal.SIGKILL)
    wait_for(lambda: isr(leader, topic) == [leader_id], "the ISR down to the leader",
             timeout=FAILOVER_TIMEOUT_S)
    assert leader_of(leader, topic) == leader_id

    # A raw acks=all Produce is refused before it is appended; acks=1 still works.
    response = produce_one(leader, topic, 0, b"refused raw", acks=-1)
    assert response["error_code"] == NOT_ENOUGH_REPLICAS, response
    response = produce_one(leader, topic, 0, b"acks=1 raw", acks=1)
    assert response["error_code"] == 0, response
    # A confluent-kafka producer gets only failed delivery reports (it retries
    # NOT_ENOUGH_REPLICAS until its message timeout).
    refused = AckedProducer(alive(), topic, tag="refused",
                            extra_conf={"message.timeout.ms": 5000})
    refused.produce(10)
    assert refused.flush(60) == 0
    acked_refused, refused_errors = refused.snapshot()
    assert acked_refused == []
    assert len(refused_errors) == 10
    assert {err.code() for _, _, err in refused_errors} <= {
        KafkaError.NOT_ENOUGH_REPLICAS, KafkaError._MSG_TIMED_OUT}, refused_errors[:3]

    # What was acknowledged before stays readable (the high watermark is the leader's end).
    consumed = read_all(alive(), topic, [0])
    assert check_acked(acked_before, consumed) == []

    # One replica returns: once it is back in the ISR, acks=all works again.
    returning = followers[0]
    by_id[returning].start(wait=True)
    wait_for(lambda: isr(leader, topic) == sorted([leader_id, returning]),
             "the restarted replica back in the ISR", timeout=FAILOVER_TIMEOUT_S)
    assert produce_one(leader, topic, 0, b"accepted raw")["error_code"] == 0
    second = AckedProducer(alive(), topic, tag="after")
    second.produce(100)
    assert second.flush() == 0
    acked_after, errors = second.snapshot()
    assert errors == [] and len(acked_after) == 100

    consumed = read_all(alive(), topic, [0])
    assert check_acked(acked_before + acked_after, consumed) == []
    values = {value for _, value, _, _ in consumed}
    assert {b"acks=1 raw", b"accepted raw"} <= values
    # Refused means not written: none of them is in the log.
    assert b"refused raw" not in values
    assert not any(v.startswith(b"refused-") for v in values)


def lose_the_last_in_sync_replica(make_broker, topic_config):
    """Five brokers, a topic on brokers 1-3 with 50 records acknowledged by all three. Then
    2 and 3 stop and leave the ISR, broker 1 alone takes five acks=1 writes ("only on 1: i")
    and dies, and 2 and 3 resume, behind it. Returns (by_id, topic, acked, observer)."""
    brokers = start_cluster(make_broker, size=5, settings=REPLICATION_SETTINGS)
    by_id = {b.node_id: b for b in brokers}
    topic = unique_topic("last-isr")
    create_replicated_topic(bootstrap_of(brokers), topic, replica_assignment=[[1, 2, 3]],
                            config=topic_config)
    wait_full_isr(brokers, topic, 1, 3)
    producer = AckedProducer(bootstrap_of(brokers), topic, tag="replicated")
    producer.produce(50)
    assert producer.flush() == 0
    acked, errors = producer.snapshot()
    assert errors == [] and len(acked) == 50

    # SIGSTOP, not SIGKILL, for 2 and 3: they must be back (without having fetched the
    # tail) for three of the five voters to be up and fence broker 1.
    stopped = [by_id[2], by_id[3]]
    for b in stopped:
        b.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: isr(by_id[1], topic) == [1], "the ISR down to broker 1",
                 timeout=FAILOVER_TIMEOUT_S)
        for i in range(5):
            response = produce_one(by_id[1], topic, 0, f"only on 1: {i}".encode(), acks=1)
            assert response["error_code"] == 0, response
        by_id[1].kill(signal.SIGKILL)
    finally:
        for b in stopped:
            b.proc.send_signal(signal.SIGCONT)
    observer = by_id[4]
    wait_for(lambda: broker_ids(observer) == [2, 3, 4, 5], "broker 1 fenced, 2 and 3 back",
             timeout=FAILOVER_TIMEOUT_S)
    return by_id, topic, acked, observer


@pytest.mark.timeout(300)
def test_without_unclean_election_a_partition_waits_for_its_last_in_sync_replica(make_broker):
    """unclean.leader.election.enable=false (the default): when the last in-sync replica dies
    the partition stays offline, even with the other replicas back, and returns with every
    record, acks=1 ones included, when that replica does."""
    by_id, topic, acked, observer = lose_the_last_in_sync_replica(make_broker, {})
    brokers = list(by_id.values())
    # Let the controller go through a few more changes with 2 and 3 unfenced (a topic on
    # them, fully replicated): the partition still has no leader and broker 1 as its ISR.
    probe = unique_topic("probe")
    create_replicated_topic(bootstrap_of(brokers), probe, replica_assignment=[[2, 3, 4]])
    wait_full_isr([observer], probe, 1, 3, timeout=FAILOVER_TIMEOUT_S)
    state = leaders(observer, topic)[0]
    assert (state["leader"], state["isr"]) == (-1, [1]), state

    by_id[1].start(wait=True)
    wait_for(lambda: leader_of(observer, topic) == 1, "broker 1 leads again",
             timeout=FAILOVER_TIMEOUT_S)
    consumed = read_all(bootstrap_of(brokers), topic, [0])
    assert check_acked(acked, consumed) == []
    assert [v for _, v, _, _ in consumed][50:] == [f"only on 1: {i}".encode() for i in range(5)]
    wait_full_isr(brokers, topic, 1, 3, timeout=FAILOVER_TIMEOUT_S)


@pytest.mark.timeout(300)
def test_with_unclean_election_an_out_of_sync_replica_takes_over(make_broker):
    """unclean.leader.election.enable=true on the topic: a replica that was out of the ISR
    leads once it is back; what only the dead leader had (acks=1 writes) is lost, what all
    three had acknowledged is not. The old leader returns as a follower and drops its tail."""
    by_id, topic, acked, observer = lose_the_last_in_sync_replica(
        make_broker, {"unclean.leader.election.enable": "true"})
    brokers = list(by_id.values())
    wait_for(lambda: leader_of(observer, topic) in (2, 3), "an unclean leader",
             timeout=FAILOVER_TIMEOUT_S)
    consumed = read_all(bootstrap_of(brokers), topic, [0])
    assert check_acked(acked, consumed) == []
    assert len(consumed) == 50

    by_id[1].start(wait=True)
    wait_full_isr(brokers, topic, 1, 3, timeout=FAILOVER_TIMEOUT_S)
    assert read_all(bootstrap_of(brokers), topic, [0]) == consumed


def test_create_topics_with_a_manual_assignment_of_three_replicas(make_broker):
    """CreateTopics with replica assignments (confluent-kafka's
    `NewTopic(replica_assignment=...)`): the replicas and preferred leader are as asked."""
    brokers = start_cluster(make_broker, settings=REPLICATION_SETTINGS)
    topic = unique_topic("manual")
    create_replicated_topic(bootstrap_of(brokers), topic,
                            replica_assignment=[[1, 2, 3], [2, 3, 1], [3, 1, 2]])
    placement = wait_full_isr(brokers, topic, 3, 3)
    assert {p: (v["leader"], v["replicas"]) for p, v in placement.items()} == {
        0: (1, [1, 2, 3]), 1: (2, [2, 3, 1]), 2: (3, [3, 1, 2])}


# --------------------------------------------------------------------------
# 4. Controller failover
# --------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_killing_the_active_controller_elects_a_new_one_and_metadata_changes_keep_working(
        make_broker):
    brokers = start_cluster(make_broker, settings=REPLICATION_SETTINGS, metrics=True)
    by_id = {b.node_id: b for b in brokers}
    old = wait_for(lambda: active_controller(brokers), "an active controller every node sees")
    old_term = scrape_metrics(by_id[old])["sluice_controller_term"]
    by_id[old].kill(signal.SIGKILL)
    survivors = [b for b in brokers if b.node_id != old]

    new = wait_for(lambda: (lambda c: c if c not in (None, old) else None)(
        active_controller(survivors)), "a new active controller", timeout=FAILOVER_TIMEOUT_S)
    assert new in {b.node_id for b in survivors}
    assert scrape_metrics(by_id[new])["sluice_controller_term"] > old_term
    # The new controller fences the dead node (its session runs out) ...
    survivor_ids = sorted(b.node_id for b in survivors)
    for b in survivors:
        wait_for(lambda b=b: broker_ids(b) == survivor_ids, f"the dead node fenced on {b}",
                 timeout=SESSION_TIMEOUT_MS / 1000 + FAILOVER_TIMEOUT_S)

    # ... and metadata changes commit: a new replicated topic on the two survivors.
    topic = unique_topic("new-controller")
    create_replicated_topic(bootstrap_of(survivors), topic, partitions=2, replication_factor=2,
                            config=MIN_ISR_2)
    placement = wait_full_isr(survivors, topic, 2, 2)
    for p in placement.values():
        assert sorted(p["replicas"]) == survivor_ids, placement

    producer = AckedProducer(bootstrap_of(survivors), topic)
    producer.produce(200)
    assert producer.flush() == 0
    acked, errors = producer.snapshot()
    assert errors == [] and len(acked) == 200
    consumed = read_all(bootstrap_of(survivors), topic, [0, 1])
    assert check_acked(acked, consumed) == []
    assert {p for _, _, p, _ in acked} == {0, 1}


# --------------------------------------------------------------------------
# 5. Group coordinator failover
# --------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_consumer_group_keeps_consuming_through_a_coordinator_failover(make_broker):
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    brokers = start_cluster(make_broker, settings=REPLICATION_SETTINGS)
    by_id = {b.node_id: b for b in brokers}
    bootstrap = bootstrap_of(brokers)
    topic = unique_topic("coordinator")
    partitions = [0, 1]
    create_replicated_topic(bootstrap, topic, partitions=len(partitions), replication_factor=3,
                            config=MIN_ISR_2)
    wait_full_isr(brokers, topic, len(partitions), 3)
    wait_full_isr(brokers, "__consumer_offsets", 3, 3)
    producer = AckedProducer(bootstrap, topic)
    producer.produce(400)
    assert producer.flush() == 0
    acked, errors = producer.snapshot()
    assert errors == [] and len(acked) == 400
    total = len(acked)

    group = unique_topic("group")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
                         "socket.timeout.ms": 10000, "topic.metadata.refresh.interval.ms": 1000})
    consumed = []

    def poll_until(condition, what, timeout):
        def step():
            for m in consumer.consume(num_messages=100, timeout=0.5):
                if not m.error():
                    consumed.append((m.partition(), m.offset()))
            return condition()
        wait_for(step, what, timeout=timeout)

    try:
        consumer.subscribe([topic])
        poll_until(lambda: len(consumed) >= total // 2, "half of the records", timeout=60)
        committed = valid_offsets(consumer.commit(asynchronous=False))
        assert sum(committed.values()) == len(consumed), committed

        coordinator = find_coordinator(brokers[0], group)
        assert coordinator["error_code"] == 0, coordinator
        old = coordinator["node_id"]
        by_id[old].kill(signal.SIGKILL)
        survivors = [b for b in brokers if b.node_id != old]

        # The coordinator moves with the leadership of the group's offsets partition.
        def moved():
            c = find_coordinator(survivors[0], group)
            return c if c["error_code"] == 0 and c["node_id"] != old else None

        wait_for(moved, "a new coordinator", timeout=FAILOVER_TIMEOUT_S)

        # The offsets committed before the failover survive it.
        def committed_now():
            try:
                got = consumer.committed([TopicPartition(topic, p) for p in partitions],
                                         timeout=10)
            except KafkaException:
                return None
            return valid_offsets(got)

        wait_for(lambda: committed_now() == committed, "the committed offsets read back",
                 timeout=FAILOVER_TIMEOUT_S)

        # The consumer keeps going to the end.
        ends = high_watermarks(bootstrap_of(survivors), topic, partitions)
        assert sum(ends.values()) == total
        poll_until(lambda: {(p, o) for p, o in consumed} >= {
            (p, o) for p in partitions for o in range(ends[p])}, "every record consumed",
            timeout=FAILOVER_TIMEOUT_S)

        def commit_all():
            try:
                return consumer.commit(asynchronous=False)
            except KafkaException:
                return None

        wait_for(commit_all, "a commit through the new coordinator", timeout=60)
    finally:
        consumer.close()

    # Nothing skipped; a record read twice only from the last commit on.
    seen = {}
    for p, o in consumed:
        seen[(p, o)] = seen.get((p, o), 0) + 1
    assert set(seen) == {(p, o) for p in partitions for o in range(ends[p])}
    twice = sorted(po for po, n in seen.items() if n > 1)
    assert all(o >= committed.get(p, 0) for p, o in twice), (committed, twice[:10])

    # A new member of the group starts from the final commit.
    reader = Consumer({"bootstrap.servers": bootstrap_of(survivors), "group.id": group,
                       "enable.auto.commit": False})
    try:
        final = reader.committed([TopicPartition(topic, p) for p in partitions], timeout=30)
        assert {tp.partition: tp.offset for tp in final} == ends
    finally:
        reader.close()
