"""Compression, compression.type, LogAppendTime and keyless records on compacted topics,
driven with confluent-kafka (librdkafka) and kafka-python against the real broker."""

import struct
import time

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TIMESTAMP_LOG_APPEND_TIME
from confluent_kafka import TIMESTAMP_CREATE_TIME
from confluent_kafka import TopicPartition as CTopicPartition
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

import kafka_wire as kw
from conftest import create_topic, unique_topic

CODECS = ["gzip", "snappy", "lz4", "zstd"]
CODEC_BITS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def records_for(tag, n=50):
    """Keys, values and headers with some repetition so every codec really compresses."""
    return [
        (f"key-{i}".encode(), (f"{tag}-value-{i}-" + "x" * (i % 17) * 10).encode(),
         [("h", f"hv-{i}".encode()), ("n", b"")] if i % 3 == 0 else [])
        for i in range(n)
    ]


def confluent_produce(bootstrap, topic, records, codec, **extra):
    # One batch for all records: librdkafka sends a batch uncompressed when compressing
    # does not make it smaller, which a batch of one small record (a loaded machine
    # lingering past 50 ms between produce calls) does not. flush() sends at once anyway.
    conf = {"bootstrap.servers": bootstrap, "compression.codec": codec, "linger.ms": 5000,
            "batch.num.messages": 1000, "acks": "all"}
    conf.update(extra)
    p = Producer(conf)
    errors = []

    def report(err, msg):
        if err is not None:
            errors.append(err)

    for key, value, headers in records:
        p.produce(topic, key=key, value=value, headers=headers or None, partition=0,
                  on_delivery=report)
    assert p.flush(30) == 0
    return errors


def confluent_consume(bootstrap, topic, n, timeout=30):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("g"),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([CTopicPartition(topic, 0, 0)])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            out.append(m)
    finally:
        c.close()
    return out


def kp_produce(bootstrap, topic, records, codec):
    p = KafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, linger_ms=50,
                      acks="all", enable_idempotence=False, batch_size=1 << 20)
    futures = [p.send(topic, key=k, value=v, headers=[(hk, hv) for hk, hv in h], partition=0)
               for k, v, h in records]
    p.flush(30)
    for f in futures:
        f.get(timeout=30)
    p.close()


def kp_consume(bootstrap, topic, n, timeout=30):
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                      auto_offset_reset="earliest", fetch_max_wait_ms=200)
    c.assign([TopicPartition(topic, 0)])
    c.seek(TopicPartition(topic, 0), 0)
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        for _, recs in c.poll(timeout_ms=500).items():
            out.extend(recs)
    c.close()
    return out


def as_tuples_confluent(msgs):
    return [(m.key(), m.value(), [(k, v) for k, v in (m.headers() or [])]) for m in msgs]


def as_tuples_kp(msgs):
    return [(m.key, m.value, [(k, v) for k, v in m.headers]) for m in msgs]


def expected(records):
    return [(k, v, list(h)) for k, v, h in records]


def stored_batch_attributes(broker, topic):
    """Attributes of every stored batch of partition 0, read with a raw Fetch."""
    with broker.conn() as c:
        r = c.request(kw.API_FETCH, 4, kw.fetch_v4_body(topic, 0, 0, max_wait_ms=10))
        resp = kw.parse_fetch_v4(r)
    data = resp["topics"][0]["partitions"][0]["records"] or b""
    out = []
    pos = 0
    while pos + 61 <= len(data):
        base_offset, batch_len = struct.unpack(">qi", data[pos:pos + 12])
        end = pos + 12 + batch_len
        if end > len(data):
            break
        (crc,) = struct.unpack(">I", data[pos + 17:pos + 21])
        assert kw.crc32c(data[pos + 21:end]) == crc, "stored batch CRC is wrong"
        (attrs,) = struct.unpack(">h", data[pos + 21:pos + 23])
        (max_ts,) = struct.unpack(">q", data[pos + 35:pos + 43])
        out.append({"base_offset": base_offset, "attributes": attrs, "max_timestamp": max_ts})
        pos = end
    assert out, "no batch fetched"
    return out


@pytest.mark.parametrize("codec", CODECS)
def test_confluent_round_trip_and_kafka_python_reads_it(broker, codec):
    topic = unique_topic(f"c-{codec}")
    create_topic(broker.bootstrap, topic)
    records = records_for(codec)
    assert confluent_produce(broker.bootstrap, topic, records, codec) == []
    attrs = stored_batch_attributes(broker, topic)
    # Stored as the producer sent it (compression.type=producer).
    assert all(a["attributes"] & 7 == CODEC_BITS[codec] for a in attrs), attrs
    got = confluent_consume(broker.bootstrap, topic, len(records))
    assert as_tuples_confluent(got) == expected(records)
    assert [m.offset() for m in got] == list(range(len(records)))
    got_kp = kp_consume(broker.bootstrap, topic, len(records))
    assert as_tuples_kp(got_kp) == expected(records)


@pytest.mark.parametrize("codec", CODECS)
def test_kafka_python_round_trip_and_confluent_reads_it(broker, codec):
    topic = unique_topic(f"k-{codec}")
    create_topic(broker.bootstrap, topic)
    records = records_for("kp-" + codec)
    kp_produce(broker.bootstrap, topic, records, codec)
    attrs = stored_batch_attributes(broker, topic)
    assert all(a["attributes"] & 7 == CODEC_BITS[codec] for a in attrs), attrs
    got_kp = kp_consume(broker.bootstrap, topic, len(records))
    assert as_tuples_kp(got_kp) == expected(records)
    got = confluent_consume(broker.bootstrap, topic, len(records))
    assert as_tuples_confluent(got) == expected(records)


def test_topic_compression_type_recompresses_gzip_to_zstd(broker):
    topic = unique_topic("to-zstd")
    create_topic(broker.bootstrap, topic, config={"compression.type": "zstd"})
    records = records_for("recompressed")
    assert confluent_produce(broker.bootstrap, topic, records, "gzip") == []
    kp_produce(broker.bootstrap, topic, records, "gzip")
    attrs = stored_batch_attributes(broker, topic)
    assert all(a["attributes"] & 7 == CODEC_BITS["zstd"] for a in attrs), attrs
    want = expected(records) * 2
    assert as_tuples_confluent(confluent_consume(broker.bootstrap, topic, len(want))) == want
    assert as_tuples_kp(kp_consume(broker.bootstrap, topic, len(want))) == want


def test_topic_compression_type_uncompressed_decompresses(broker):
    topic = unique_topic("to-none")
    create_topic(broker.bootstrap, topic, config={"compression.type": "uncompressed"})
    records = records_for("plain")
    assert confluent_produce(broker.bootstrap, topic, records, "lz4") == []
    attrs = stored_batch_attributes(broker, topic)
    assert all(a["attributes"] & 7 == 0 for a in attrs), attrs
    with broker.conn() as c:
        p = kw.fetch_v4(c, topic, 0, 0, max_wait_ms=10)
    assert [(d["key"], d["value"]) for d in p["decoded"]] == [(k, v) for k, v, _ in records]


def test_log_append_time_topic_gives_consumers_the_broker_time(broker):
    topic = unique_topic("lat")
    create_topic(broker.bootstrap, topic, config={"message.timestamp.type": "LogAppendTime"})
    records = records_for("lat", n=10)
    before_ms = int(time.time() * 1000)
    old_ms = 1_000_000_000_000  # 2001: far from now
    p = Producer({"bootstrap.servers": broker.bootstrap, "compression.codec": "snappy"})
    for k, v, _ in records:
        p.produce(topic, key=k, value=v, partition=0, timestamp=old_ms)
    assert p.flush(30) == 0
    after_ms = int(time.time() * 1000)
    got = confluent_consume(broker.bootstrap, topic, len(records))
    assert len(got) == len(records)
    for m in got:
        ts_type, ts = m.timestamp()
        assert ts_type == TIMESTAMP_LOG_APPEND_TIME
        assert before_ms - 1000 <= ts <= after_ms + 1000, (ts, before_ms, after_ms)
    got_kp = kp_consume(broker.bootstrap, topic, len(records))
    assert all(m.timestamp_type == 1 and before_ms - 1000 <= m.timestamp <= after_ms + 1000
               for m in got_kp)
    attrs = stored_batch_attributes(broker, topic)
    assert all(a["attributes"] & 0x08 for a in attrs)
    # The Produce response carries the append time; a raw v3 produce shows it.
    with broker.conn() as c:
        r = kw.produce_v3(c, topic, 0, kw.encode_batch([(b"k", b"v")], base_timestamp=old_ms))
    assert r["error_code"] == 0
    assert r["log_append_time"] >= before_ms
    # ListOffsets by timestamp sees the stamped times, not the producer's.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": unique_topic("g")})
    tp = CTopicPartition(topic, 0, old_ms + 1)
    found = c.offsets_for_times([tp], timeout=15)
    c.close()
    assert found[0].offset == 0


def test_create_time_topic_keeps_producer_timestamps(broker):
    topic = unique_topic("ct")
    create_topic(broker.bootstrap, topic)
    with broker.conn() as c:
        r = kw.produce_v3(c, topic, 0, kw.encode_batch([(b"k", b"v")], base_timestamp=12345))
    assert r["error_code"] == 0 and r["log_append_time"] == -1
    got = confluent_consume(broker.bootstrap, topic, 1)
    assert got[0].timestamp() == (TIMESTAMP_CREATE_TIME, 12345)


def test_keyless_produce_to_compacted_topic_fails_with_invalid_record(broker):
    topic = unique_topic("compact")
    create_topic(broker.bootstrap, topic, config={"cleanup.policy": "compact"})
    errors = confluent_produce(broker.bootstrap, topic, [(None, b"no key", [])], "none",
                               **{"message.send.max.retries": 0})
    assert len(errors) == 1
    assert errors[0].code() == KafkaError.INVALID_RECORD, errors[0]
    # Keyed records are fine, in any codec, and nothing of the refused batch was stored.
    assert confluent_produce(broker.bootstrap, topic, [(b"k", b"v", [])], "zstd") == []
    got = confluent_consume(broker.bootstrap, topic, 1)
    assert [(m.key(), m.value(), m.offset()) for m in got] == [(b"k", b"v", 0)]


def test_corrupt_compressed_payload_is_refused_and_broker_survives(broker):
    topic = unique_topic("corrupt")
    create_topic(broker.bootstrap, topic)
    good = bytearray(kw.encode_batch([(b"k", b"v" * 100)]))
    for bits in (1, 2, 3, 4):
        bad = bytearray(good)
        struct.pack_into(">h", bad, 21, bits)
        struct.pack_into(">I", bad, 17, kw.crc32c(bytes(bad[21:])))
        with broker.conn() as c:
            r = kw.produce_v3(c, topic, 0, bytes(bad))
        assert r["error_code"] == kw.CORRUPT_MESSAGE, (bits, r)
    for bits in (5, 6, 7):
        bad = bytearray(good)
        struct.pack_into(">h", bad, 21, bits)
        struct.pack_into(">I", bad, 17, kw.crc32c(bytes(bad[21:])))
        with broker.conn() as c:
            r = kw.produce_v3(c, topic, 0, bytes(bad))
        assert r["error_code"] == kw.INVALID_RECORD, (bits, r)
    with broker.conn() as c:
        r = kw.produce_v3(c, topic, 0, bytes(good))
    assert r["error_code"] == 0 and r["base_offset"] == 0
    broker.assert_alive()
