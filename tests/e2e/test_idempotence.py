"""Idempotent producer (KIP-98 without transactions): InitProducerId, duplicate
detection of retried batches, sequence and epoch checks, state rebuilt after a
crash, and the test-only produce response fault switch that forces retries."""

import signal
import struct
import time

import kafka_wire as kw
from confluent_kafka import Producer

from conftest import confluent_consume_all, create_topic, unique_topic

API_INIT_PRODUCER_ID = 22
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
INVALID_PRODUCER_EPOCH = 47
TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53


def init_producer_id_v1(conn, transactional_id=None):
    r = conn.request(API_INIT_PRODUCER_ID, 1, kw.string(transactional_id) + kw.i32(60000))
    return {"throttle": r.i32(), "error_code": r.i16(), "producer_id": r.i64(),
            "producer_epoch": r.i16()}


def idempotent_batch(values, producer_id, epoch, base_sequence):
    """A RecordBatch v2 carrying producer id, epoch and base sequence."""
    ts = int(time.time() * 1000)
    recs = b"".join(kw.encode_record(i, 0, None, v) for i, v in enumerate(values))
    n = len(values)
    after_crc = (kw.i16(0) + kw.i32(n - 1) + kw.i64(ts) + kw.i64(ts) + kw.i64(producer_id)
                 + kw.i16(epoch) + kw.i32(base_sequence) + kw.i32(n) + recs)
    after_len = kw.i32(0) + kw.i8(2) + kw.u32(kw.crc32c(after_crc)) + after_crc
    return kw.i64(0) + kw.i32(len(after_len)) + after_len


def conn_of(broker):
    host, port = broker.bootstrap.split(":")
    return kw.Conn(host, int(port))


def test_init_producer_id_hands_out_fresh_ids_that_survive_restarts(make_broker):
    broker = make_broker()
    with conn_of(broker) as c:
        first = init_producer_id_v1(c)
        second = init_producer_id_v1(c)
        refused = init_producer_id_v1(c, "my-transaction")
    assert first["error_code"] == 0 and first["producer_epoch"] == 0
    assert second["producer_id"] > first["producer_id"] >= 0
    assert refused["error_code"] == TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    broker.restart(sig=signal.SIGKILL)
    with conn_of(broker) as c:
        after = init_producer_id_v1(c)
    assert after["error_code"] == 0
    assert after["producer_id"] > second["producer_id"], "a producer id was reused after a crash"


def test_wire_duplicates_gaps_and_fencing_also_after_sigkill(make_broker):
    broker = make_broker()
    topic = unique_topic("idem-wire")
    with conn_of(broker) as c:
        kw.wait_for_topic(c, topic)
        pid = init_producer_id_v1(c)["producer_id"]
        first = kw.produce_v3(c, topic, 0, idempotent_batch([b"a", b"b"], pid, 0, 0))
        second = kw.produce_v3(c, topic, 0, idempotent_batch([b"c"], pid, 0, 2))
        assert (first["error_code"], first["base_offset"]) == (0, 0)
        assert (second["error_code"], second["base_offset"]) == (0, 2)
        again = kw.produce_v3(c, topic, 0, idempotent_batch([b"a", b"b"], pid, 0, 0))
        assert (again["error_code"], again["base_offset"]) == (0, 0), again
        gap = kw.produce_v3(c, topic, 0, idempotent_batch([b"x"], pid, 0, 5))
        assert gap["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER, gap
        bumped = kw.produce_v3(c, topic, 0, idempotent_batch([b"d"], pid, 1, 0))
        assert (bumped["error_code"], bumped["base_offset"]) == (0, 3), bumped
        old = kw.produce_v3(c, topic, 0, idempotent_batch([b"y"], pid, 0, 3))
        assert old["error_code"] == INVALID_PRODUCER_EPOCH, old
    # Crash without a clean shutdown: the state must be rebuilt from the log.
    broker.restart(sig=signal.SIGKILL)
    with conn_of(broker) as c:
        kw.wait_for_topic(c, topic)
        again = kw.produce_v3(c, topic, 0, idempotent_batch([b"d"], pid, 1, 0))
        assert (again["error_code"], again["base_offset"]) == (0, 3), again
        gap = kw.produce_v3(c, topic, 0, idempotent_batch([b"x"], pid, 1, 7))
        assert gap["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER, gap
        old = kw.produce_v3(c, topic, 0, idempotent_batch([b"y"], pid, 0, 3))
        assert old["error_code"] == INVALID_PRODUCER_EPOCH, old
        nxt = kw.produce_v3(c, topic, 0, idempotent_batch([b"e"], pid, 1, 1))
        assert (nxt["error_code"], nxt["base_offset"]) == (0, 4), nxt
        fetched = kw.fetch_v4(c, topic, 0, 0)
    assert [rec["value"] for rec in fetched["decoded"]] == [b"a", b"b", b"c", b"d", b"e"]


def dropped_responses(broker):
    return broker.stderr_text(all_generations=True).count("response dropped")


def check_exactly_once(bootstrap, topic, partitions, count):
    msgs = confluent_consume_all(bootstrap, topic, list(range(partitions)), count, timeout=90)
    numbers = [int(m.value()) for m in msgs]
    assert sorted(numbers) == list(range(count)), "lost or duplicated messages"
    for p in range(partitions):
        in_partition = [int(m.value()) for m in msgs if m.partition() == p]
        assert in_partition == sorted(in_partition), f"partition {p} out of order"
        assert all(n % partitions == p for n in in_partition)


def test_confluent_idempotent_producer_is_exactly_once_when_responses_are_dropped(make_broker):
    broker = make_broker(settings={"test.fault.produce.response.drop.every": 9})
    topic = unique_topic("idem-confluent")
    partitions, count = 3, 2000
    create_topic(broker.bootstrap, topic, partitions)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True,
                         "acks": "all", "linger.ms": 5, "batch.num.messages": 50,
                         "message.timeout.ms": 60000, "retry.backoff.ms": 50})
    errors = []

    def on_delivery(err, msg):
        if err:
            errors.append(err)

    for i in range(count):
        producer.produce(topic, str(i).encode(), partition=i % partitions, on_delivery=on_delivery)
        if i % 100 == 0:
            producer.poll(0)
    assert producer.flush(90) == 0
    assert errors == []
    assert dropped_responses(broker) >= 3, "the fault switch never fired: no retry was proven"
    check_exactly_once(broker.bootstrap, topic, partitions, count)


def test_kafka_python_idempotent_producer_is_exactly_once_when_responses_are_dropped(make_broker):
    from kafka import KafkaProducer

    broker = make_broker(settings={"test.fault.produce.response.drop.every": 3})
    topic = unique_topic("idem-kp")
    partitions, count = 3, 600
    create_topic(broker.bootstrap, topic, partitions)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True,
                             acks="all", linger_ms=5, batch_size=512, retries=20,
                             request_timeout_ms=10000, retry_backoff_ms=50)
    futures = []
    # Flush in small rounds: kafka-python puts every partition into one request, so this
    # makes enough requests for the switch to fire several times.
    for i in range(count):
        futures.append(producer.send(topic, str(i).encode(), partition=i % partitions))
        if i % 40 == 39:
            producer.flush(60)
    producer.flush(90)
    for f in futures:
        f.get(timeout=30)
    producer.close()
    assert dropped_responses(broker) >= 1, "the fault switch never fired: no retry was proven"
    check_exactly_once(broker.bootstrap, topic, partitions, count)


def test_delay_switch_delays_produce_responses(make_broker):
    broker = make_broker(settings={"test.fault.produce.response.delay.ms": 700})
    topic = unique_topic("idem-delay")
    with conn_of(broker) as c:
        kw.wait_for_topic(c, topic)
        started = time.monotonic()
        resp = kw.produce_v3(c, topic, 0, kw.encode_batch([(None, b"v")]))
        elapsed = time.monotonic() - started
    assert resp["error_code"] == 0
    assert elapsed >= 0.65, f"response came after {elapsed:.3f} s"


def test_idle_producers_expire_and_may_then_start_at_any_sequence(make_broker):
    broker = make_broker(settings={"producer.id.expiration.ms": 1000,
                                   "producer.id.expiration.check.interval.ms": 200})
    topic = unique_topic("idem-expire")
    with conn_of(broker) as c:
        kw.wait_for_topic(c, topic)
        pid = init_producer_id_v1(c)["producer_id"]
        assert kw.produce_v3(c, topic, 0, idempotent_batch([b"a"], pid, 0, 0))["error_code"] == 0
        gap = kw.produce_v3(c, topic, 0, idempotent_batch([b"b"], pid, 0, 5))
        assert gap["error_code"] == OUT_OF_ORDER_SEQUENCE_NUMBER
        time.sleep(2.0)
        # Forgotten: the same gap is now the first batch of an unknown producer.
        after = kw.produce_v3(c, topic, 0, idempotent_batch([b"b"], pid, 0, 5))
        assert (after["error_code"], after["base_offset"]) == (0, 1), after
    assert "expired idle producer ids" in broker.stderr_text()
