"""Preferred leader election, on request (ElectLeaders from confluent-kafka's AdminClient)
and automatic (`auto.leader.rebalance.enable`), on three `sluice serve` processes.

After a broker dies its partitions are led by other ISR members; when it returns and has
caught up, leadership goes back to it as each partition's first (preferred) replica.
"""

import signal

from confluent_kafka import ElectionType, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from cluster_harness import (
    bootstrap_of,
    create_replicated_topic,
    leaders,
    start_cluster,
    wait_for,
    wait_full_isr,
)
from conftest import unique_topic


def fail_over_broker_1(brokers, topic):
    """SIGKILL broker 1 (preferred leader of partition 0), wait until another broker leads
    partition 0, restart broker 1 and wait until it is back in every ISR."""
    brokers[0].kill(signal.SIGKILL)
    wait_for(lambda: leaders(brokers[1], topic)[0]["leader"] in (2, 3), "partition 0 fails over")
    brokers[0].start(wait=True)
    wait_full_isr(brokers, topic, 2, 3)


def test_elect_leaders_moves_leadership_back_to_the_preferred_replica(make_broker):
    brokers = start_cluster(make_broker, settings={
        "replica.lag.time.max.ms": 3000,
        "auto.leader.rebalance.enable": "false",
    })
    bootstrap = bootstrap_of(brokers)
    topic = unique_topic("elect")
    create_replicated_topic(bootstrap, topic, replica_assignment=[[1, 2, 3], [2, 3, 1]])
    wait_full_isr(brokers, topic, 2, 3)
    fail_over_broker_1(brokers, topic)
    before = leaders(brokers[1], topic)
    assert before[0]["leader"] != 1, "no automatic rebalance when it is disabled"

    admin = AdminClient({"bootstrap.servers": bootstrap})
    result = admin.elect_leaders(
        ElectionType.PREFERRED, [TopicPartition(topic, 0), TopicPartition(topic, 1)]
    ).result(timeout=30)
    errors = {tp.partition: error for tp, error in result.items()}
    assert errors[0] is None, errors
    # Partition 1 is still led by its preferred replica 2.
    assert errors[1] is not None and errors[1].code() == KafkaError.ELECTION_NOT_NEEDED

    wait_for(lambda: leaders(brokers[2], topic)[0]["leader"] == 1, "broker 1 leads partition 0 again")
    assert leaders(brokers[2], topic)[1]["leader"] == 2


def test_auto_leader_rebalance_returns_leadership_to_a_restarted_broker(make_broker):
    brokers = start_cluster(make_broker, settings={
        "replica.lag.time.max.ms": 3000,
        "leader.imbalance.check.interval.seconds": 1,
    })
    bootstrap = bootstrap_of(brokers)
    topic = unique_topic("rebalance")
    create_replicated_topic(bootstrap, topic, replica_assignment=[[1, 2, 3], [2, 3, 1]])
    wait_full_isr(brokers, topic, 2, 3)
    fail_over_broker_1(brokers, topic)
    wait_for(lambda: leaders(brokers[2], topic)[0]["leader"] == 1,
             "the active controller moves partition 0 back to broker 1", timeout=60)
    assert leaders(brokers[2], topic)[1]["leader"] == 2
