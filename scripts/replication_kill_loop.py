#!/usr/bin/env python3
"""Crash loop of a three-broker replicated cluster driven by a real Kafka client.

Starts three `sluice serve` processes (one controller quorum), creates a topic with
replication factor 3 and min.insync.replicas=2, and runs an idempotent acks=all
confluent-kafka (librdkafka) producer the whole time. Each round waits 2-5 s, then either
SIGKILLs a random broker and restarts it 0.5-2 s later, or SIGSTOPs it for 1-6 s (longer
than the session timeout: it is fenced) and SIGCONTs it. At the end every partition is read
back from its leader and checked: every acknowledged record is at its acknowledged offset
(none lost), no value appears twice (no duplicates), and per partition the acknowledged
offsets rise in acknowledgement order.

    .venv/bin/python scripts/replication_kill_loop.py --rounds 30 --seed 2

Exit status 0 when clean, 1 on any violation (the data directory is kept then).
"""

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parent.parent
TOPIC = "loop"
PARTITIONS = 6


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, binary, root):
        self.binary, self.root = binary, root
        self.ports = [free_port() for _ in range(3)]
        controller_ports = [free_port() for _ in range(3)]
        self.voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(controller_ports))
        self.procs = {}

    @property
    def bootstrap(self):
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, node):
        data = self.root / f"n{node}"
        data.mkdir(parents=True, exist_ok=True)
        log = open(self.root / f"n{node}.log", "a")
        self.procs[node] = subprocess.Popen(
            [self.binary, "serve", "--listen", f"127.0.0.1:{self.ports[node - 1]}",
             "--data-dir", str(data), "--node-id", str(node),
             "--controller-quorum-voters", self.voters,
             "--set", "broker.session.timeout.ms=3000",
             "--set", "broker.heartbeat.interval.ms=500",
             "--set", "replica.lag.time.max.ms=3000",
             "--set", "offsets.topic.num.partitions=3"],
            stdout=log, stderr=log)

    def stop_all(self):
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


def produce_until(stop, bootstrap, acked, errors):
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 5, "message.timeout.ms": 120000})

    def delivered(error, message):
        if error:
            errors.append(str(error))
        else:
            acked.append((message.partition(), message.offset(), message.value()))

    sent = 0
    while not stop.is_set():
        try:
            producer.produce(TOPIC, value=b"v%d" % sent, key=b"k%d" % (sent % 50),
                             on_delivery=delivered)
            sent += 1
        except BufferError:
            producer.poll(0.1)
        producer.poll(0)
        if sent % 100 == 0:
            time.sleep(0.01)
    producer.flush(120)
    return sent


def read_back(bootstrap):
    got = {}
    for partition in range(PARTITIONS):
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "loop-check",
                             "enable.auto.commit": False})
        low, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, partition), timeout=30)
        consumer.assign([TopicPartition(TOPIC, partition, low)])
        read, last = 0, time.time()
        while read < high - low and time.time() - last < 30:
            message = consumer.poll(1)
            if message is None or message.error():
                continue
            last = time.time()
            read += 1
            got[(partition, message.offset())] = message.value()
        consumer.close()
    return got


def check(acked, got):
    lost = [a for a in acked if got.get((a[0], a[1])) != a[2]]
    seen = {}
    for key, value in got.items():
        seen.setdefault(value, []).append(key)
    duplicates = {v: k for v, k in seen.items() if len(k) > 1}
    reordered, last = 0, {}
    for partition, offset, _ in acked:
        if offset <= last.get(partition, -1):
            reordered += 1
        last[partition] = offset
    return lost, duplicates, reordered


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--binary", default=str(REPO / "target" / "debug" / "sluice"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sluice-kill-loop-"))
    cluster = Cluster(args.binary, root)
    for node in (1, 2, 3):
        cluster.start(node)
    time.sleep(6)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    for future in admin.create_topics([NewTopic(TOPIC, PARTITIONS, 3, config={
            "min.insync.replicas": "2"})]).values():
        future.result()
    acked, errors, stop = [], [], threading.Event()
    result = {}
    producer = threading.Thread(
        target=lambda: result.update(sent=produce_until(stop, cluster.bootstrap, acked, errors)))
    producer.start()
    rng = random.Random(args.seed)
    kills = stops = 0
    for round_ in range(args.rounds):
        time.sleep(rng.uniform(2, 5))
        node = rng.choice([1, 2, 3])
        if rng.random() < 0.6:
            cluster.procs[node].kill()
            cluster.procs[node].wait()
            kills += 1
            print(f"round {round_}: SIGKILL broker {node} (acked so far {len(acked)})", flush=True)
            time.sleep(rng.uniform(0.5, 2))
            cluster.start(node)
        else:
            pause = rng.uniform(1, 6)
            cluster.procs[node].send_signal(signal.SIGSTOP)
            stops += 1
            print(f"round {round_}: SIGSTOP broker {node} for {pause:.1f} s "
                  f"(acked so far {len(acked)})", flush=True)
            time.sleep(pause)
            cluster.procs[node].send_signal(signal.SIGCONT)
    time.sleep(8)
    stop.set()
    producer.join()
    got = read_back(cluster.bootstrap)
    cluster.stop_all()
    lost, duplicates, reordered = check(acked, got)
    print(f"rounds {args.rounds} (SIGKILL {kills}, SIGSTOP {stops}), seed {args.seed}: "
          f"sent {result.get('sent')}, acked {len(acked)}, delivery errors {len(errors)}, "
          f"read back {len(got)}, lost {len(lost)}, duplicates {len(duplicates)}, "
          f"out of order {reordered}")
    if lost or duplicates or reordered:
        print(f"VIOLATION; data kept in {root}: lost {lost[:5]} duplicates "
              f"{list(duplicates.items())[:5]}")
        return 1
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
