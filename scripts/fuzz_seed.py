#!/usr/bin/env python3
"""Builds the fuzz seed corpus from real client traffic.

Starts a real `sluice serve` whose advertised address is a small recording TCP proxy,
runs real clients through the proxy (confluent-kafka, kafka-python, aiokafka, kcat:
produce with every codec, consume with groups, admin calls), then writes:

  fuzz/corpus/request_frame/   every distinct request frame (size prefix included), and
                               the first frames of each connection as one input
  fuzz/corpus/request_decode/  the same frames without the size prefix
  fuzz/corpus/record_batch/    every distinct produced batch as stored (flag byte 0 first)
  fuzz/corpus/log_recovery/    small real segment files (flag byte 0 first)

Inputs are named by their SHA-1, so re-running only adds what is new. Per kind of request
(API key and version) at most PER_KEY_MAX frames are kept: the corpus stays small.

Usage: .venv/bin/python scripts/fuzz_seed.py [--sluice target/debug/sluice] [--out fuzz/corpus]
"""

import argparse
import asyncio
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PER_KEY_MAX = 12
STREAM_FRAMES_MAX = 16  # sluice_broker::fuzzing::STREAM_FRAMES_MAX
STREAM_BYTES_MAX = 64 * 1024
BATCHES_PER_CODEC_MAX = 40
SEGMENT_BYTES_MAX = 16 * 1024
SEGMENTS_MAX = 24


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordingProxy:
    """Forwards 127.0.0.1:port to the broker and records each client's request frames."""

    def __init__(self, broker_port):
        self.broker_port = broker_port
        self.port = free_port()
        self.connections = []  # one list of frames per client connection
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.broker_port))
            except OSError:
                client.close()
                continue
            frames = []
            with self.lock:
                self.connections.append(frames)
            threading.Thread(target=self._requests, args=(client, upstream, frames),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _requests(self, client, upstream, frames):
        buf = b""
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    break
                upstream.sendall(data)
                buf += data
                while len(buf) >= 4:
                    size = struct.unpack(">i", buf[:4])[0]
                    if len(buf) < 4 + size:
                        break
                    frames.append(buf[4:4 + size])
                    buf = buf[4 + size:]
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def run_confluent(bootstrap):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import (AdminClient, ConfigResource, NewPartitions,
                                       NewTopic)

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [f"ck-{c}-{uuid.uuid4().hex[:6]}" for c in ("none", "gzip", "snappy", "lz4", "zstd")]
    futures = admin.create_topics([
        NewTopic(t, num_partitions=2, replication_factor=1,
                 config={"cleanup.policy": "compact,delete"} if i == 0 else {})
        for i, t in enumerate(topics)])
    for f in futures.values():
        f.result(timeout=30)
    for codec, topic in zip(("none", "gzip", "snappy", "lz4", "zstd"), topics):
        producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec,
                             "enable.idempotence": True, "linger.ms": 5})
        for i in range(60):
            producer.produce(topic, key=f"k{i % 7}".encode(), value=(f"v{i}-" * (i % 9 + 1)).encode(),
                             headers=[("h", b"x")] if i % 5 == 0 else None)
            if i % 20 == 19:
                producer.flush(10)
        producer.flush(10)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ck-g-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(topics[:2])
    seen = 0
    deadline = time.time() + 20
    while seen < 60 and time.time() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            seen += 1
            if seen % 10 == 0:
                consumer.commit(asynchronous=False)
    consumer.offsets_for_times([TopicPartition(topics[0], 0, 0)], timeout=10)
    consumer.close()
    for f in admin.describe_configs([ConfigResource("topic", topics[0]),
                                     ConfigResource("broker", "1")]).values():
        try:
            f.result(timeout=10)
        except Exception:  # noqa: BLE001 - a refused call is still traffic
            pass
    for f in admin.alter_configs([ConfigResource("topic", topics[1],
                                                 set_config={"retention.ms": "3600000"})]).values():
        f.result(timeout=10)
    for f in admin.create_partitions([NewPartitions(topics[1], 3)]).values():
        f.result(timeout=10)
    admin.list_groups(timeout=10)
    try:
        admin.describe_cluster().result(timeout=10)
    except Exception:  # noqa: BLE001
        pass
    return topics


def run_kafka_python(bootstrap, topics):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    topic = f"kp-{uuid.uuid4().hex[:6]}"
    admin.create_topics([NewTopic(topic, 1, 1)])
    for codec in ("gzip", "snappy", "lz4", "zstd", None):
        try:
            producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, acks="all")
        except Exception:  # noqa: BLE001 - codec library missing
            continue
        for i in range(30):
            producer.send(topic, key=b"k%d" % i, value=b"kafka-python %d" % i)
        producer.flush()
        producer.close()
    group = f"kp-g-{uuid.uuid4().hex[:6]}"
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                             auto_offset_reset="earliest", consumer_timeout_ms=5000)
    for n, _ in enumerate(consumer):
        if n >= 50:
            break
    consumer.commit()
    consumer.close()
    for call in (lambda: admin.list_groups(), lambda: admin.describe_groups([group]),
                 lambda: admin.list_group_offsets(group), lambda: admin.describe_topics([topic]),
                 lambda: admin.delete_groups([group]), lambda: admin.delete_topics([topic])):
        try:
            call()
        except Exception as e:  # noqa: BLE001 - a refused call is still traffic
            print(f"kafka-python admin call failed: {e!r}")
    admin.close()


def run_aiokafka(bootstrap):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    async def main():
        topic = f"aio-{uuid.uuid4().hex[:6]}"
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip",
                                    enable_idempotence=True)
        await producer.start()
        for i in range(30):
            await producer.send_and_wait(topic, b"aio %d" % i, key=b"a%d" % (i % 3))
        await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                    group_id=f"aio-g-{uuid.uuid4().hex[:6]}",
                                    auto_offset_reset="earliest")
        await consumer.start()
        got = 0
        try:
            while got < 30:
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 10)
                got += sum(len(v) for v in batch.values())
            await consumer.commit()
        finally:
            await consumer.stop()

    asyncio.run(main())


def run_kcat(bootstrap, topic):
    if not shutil.which("kcat"):
        return
    subprocess.run(["kcat", "-b", bootstrap, "-L"], capture_output=True, timeout=30)
    lines = "\n".join(f"kcat-{i}" for i in range(40)) + "\n"
    subprocess.run(["kcat", "-b", bootstrap, "-P", "-t", topic, "-z", "lz4"],
                   input=lines.encode(), capture_output=True, timeout=30)
    subprocess.run(["kcat", "-b", bootstrap, "-C", "-t", topic, "-o", "beginning", "-e",
                    "-c", "20"], capture_output=True, timeout=30)
    subprocess.run(["kcat", "-b", bootstrap, "-G", f"kcat-g-{uuid.uuid4().hex[:6]}", topic,
                    "-e", "-c", "10"], capture_output=True, timeout=30)


def batches(data):
    """Splits segment bytes into whole batches."""
    position = 0
    while position + 61 <= len(data):
        length = struct.unpack(">i", data[position + 8:position + 12])[0]
        end = position + 12 + length
        if length < 49 or end > len(data):
            return
        yield data[position:end]
        position = end


def write(directory, data):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / hashlib.sha1(data).hexdigest()
    if not path.exists():
        path.write_bytes(data)
        return 1
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sluice", default=str(REPO / "target" / "debug" / "sluice"))
    parser.add_argument("--out", default=str(REPO / "fuzz" / "corpus"))
    args = parser.parse_args()
    out = Path(args.out)

    work = Path(tempfile.mkdtemp(prefix="sluice-fuzz-seed-"))
    broker_port = free_port()
    proxy = RecordingProxy(broker_port)
    bootstrap = f"127.0.0.1:{proxy.port}"
    data_dir = work / "data"
    log = open(work / "broker.log", "wb")
    broker = subprocess.Popen(
        [args.sluice, "serve", "--listen", f"127.0.0.1:{broker_port}", "--data-dir", str(data_dir),
         "--set", f"advertised.listeners={bootstrap}", "--set", "log.segment.bytes=65536",
         "--set", "offsets.topic.num.partitions=2"],
        stdout=log, stderr=log)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", broker_port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or broker.poll() is not None:
                    sys.exit(f"broker did not start; see {work / 'broker.log'}")
                time.sleep(0.1)
        topics = run_confluent(bootstrap)
        for name, client in (("kafka-python", lambda: run_kafka_python(bootstrap, topics)),
                             ("aiokafka", lambda: run_aiokafka(bootstrap)),
                             ("kcat", lambda: run_kcat(bootstrap, topics[0]))):
            try:
                client()
            except Exception as e:  # noqa: BLE001 - keep what the other clients recorded
                print(f"{name} failed: {e!r}")
        time.sleep(0.5)
    finally:
        broker.terminate()
        broker.wait(timeout=30)

    written = defaultdict(int)
    per_key = defaultdict(int)
    with proxy.lock:
        connections = [list(c) for c in proxy.connections]
    for frames in connections:
        for frame in frames:
            if len(frame) < 8:
                continue
            key = struct.unpack(">hh", frame[:4])
            if per_key[key] >= PER_KEY_MAX:
                continue
            added = write(out / "request_frame", struct.pack(">i", len(frame)) + frame)
            write(out / "request_decode", frame)
            per_key[key] += added
            written["request_frame"] += added
        stream = b""
        for frame in frames[:STREAM_FRAMES_MAX]:
            if len(stream) + 4 + len(frame) > STREAM_BYTES_MAX:
                break
            stream += struct.pack(">i", len(frame)) + frame
        if len(frames) > 1 and stream:
            written["request_frame streams"] += write(out / "request_frame", stream)

    per_codec = defaultdict(int)
    segments = sorted(data_dir.rglob("*.log"))
    for segment in segments:
        data = segment.read_bytes()
        for batch in batches(data):
            codec = struct.unpack(">h", batch[21:23])[0] & 7
            if per_codec[codec] >= BATCHES_PER_CODEC_MAX:
                continue
            # As a producer sends it: baseOffset 0 (outside the CRC).
            batch = b"\0" * 8 + batch[8:]
            added = write(out / "record_batch", b"\0" + batch)
            per_codec[codec] += added
            written["record_batch"] += added
    kept = 0
    for segment in segments:
        if kept >= SEGMENTS_MAX:
            break
        data = segment.read_bytes()
        cut = 0
        for batch in batches(data):
            if cut + len(batch) > SEGMENT_BYTES_MAX:
                break
            cut += len(batch)
        if cut == 0 or not segment.name.startswith("0" * 20):
            continue
        kept += 1
        written["log_recovery"] += write(out / "log_recovery", b"\0" + data[:cut])
        # The same segment with a torn tail, as after a crash mid-write.
        written["log_recovery"] += write(out / "log_recovery", b"\0" + data[:cut] + data[:37])
    for kind, n in sorted(written.items()):
        print(f"{kind}: {n} new inputs")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
