"""Malformed input on raw sockets: the broker answers with an error code or
closes the connection, never crashes, and keeps serving other connections."""

import os
import struct
import time

import pytest

import kafka_wire as kw
from conftest import create_topic, unique_topic

MAX_REQ = 1048576


@pytest.fixture
def bad_broker(make_broker):
    b = make_broker(settings={"socket.request.max.bytes": MAX_REQ, "num.partitions": 1})
    topic = unique_topic("bad")
    create_topic(b.bootstrap, topic, partitions=1)
    b.topic = topic
    return b


def assert_healthy(b):
    b.assert_alive()
    with b.conn() as c:
        err, apis = kw.api_versions_v0(c)
        assert err == 0
        assert kw.API_PRODUCE in apis and kw.API_FETCH in apis and kw.API_METADATA in apis
        value = b"healthy-" + os.urandom(8).hex().encode()
        r = kw.produce_v3(c, b.topic, 0, kw.encode_batch([(b"k", value)]))
        assert r["error_code"] == 0, r
        p = kw.fetch_v4(c, b.topic, 0, r["base_offset"], max_wait_ms=100)
        assert p["error_code"] == 0
        assert value in [x["value"] for x in p["decoded"]]
    b.assert_alive()
    assert "panicked" not in b.stderr_text(), b.stderr_text()


def test_oversized_frame_closed(bad_broker):
    with bad_broker.conn() as c:
        c.send_raw(kw.i32(100 * 1024 * 1024))
        assert c.is_closed(), "connection not closed after a 100 MB size prefix"
    # just over the limit, with a real (ApiVersions) header following
    with bad_broker.conn() as c:
        c.send_raw(kw.i32(MAX_REQ + 1) + kw.request_header_v1(18, 0, 1))
        assert c.is_closed()
    assert_healthy(bad_broker)


@pytest.mark.parametrize("size", [-1, -100, -(2 ** 31)])
def test_negative_size_closed(bad_broker, size):
    with bad_broker.conn() as c:
        c.send_raw(kw.i32(size))
        assert c.is_closed()
    assert_healthy(bad_broker)


def test_truncated_frame_then_close(bad_broker):
    for payload in (kw.i32(100) + b"\x00" * 10, b"\x00\x00", kw.i32(50) + kw.request_header_v1(3, 1, 7)[:5]):
        c = bad_broker.conn()
        c.send_raw(payload)
        c.close()
    time.sleep(0.2)
    assert_healthy(bad_broker)


def test_frame_shorter_than_header(bad_broker):
    # size says 3 bytes, which cannot hold a request header
    with bad_broker.conn() as c:
        c.send_raw(kw.i32(3) + b"\x00\x12\x00")
        assert c.is_closed()
    assert_healthy(bad_broker)


def test_unknown_api_key_closed(bad_broker):
    with bad_broker.conn() as c:
        c.send_raw(kw.frame(kw.i16(9999) + kw.i16(0) + kw.i32(1) + kw.string("x")))
        assert c.is_closed(), "connection not closed after unknown api key 9999"
    assert_healthy(bad_broker)


def test_unsupported_version_of_known_api(bad_broker):
    # Metadata v999: Kafka closes the connection; an error response is also acceptable
    with bad_broker.conn() as c:
        c.send_raw(kw.frame(kw.request_header_v2(3, 999, 5) + kw.uvarint(1) + kw.EMPTY_TAGS))
        c.sock.settimeout(5)
        try:
            resp = c.recv_frame()
            assert kw.Reader(resp).i32() == 5
        except kw.ConnectionClosed:
            pass
    assert_healthy(bad_broker)


def test_api_versions_v99_fallback(bad_broker):
    with bad_broker.conn() as c:
        body = kw.compact_string("sluice-e2e") + kw.compact_string("1.0") + kw.EMPTY_TAGS
        r = c.request(kw.API_API_VERSIONS, 99, body, flexible=True)
        err, apis = kw.parse_api_versions_v0(r)
        assert err == kw.UNSUPPORTED_VERSION
        assert kw.API_API_VERSIONS in apis
        lo, hi = apis[kw.API_API_VERSIONS]
        assert lo == 0 and hi >= 3
        # the connection is still usable for a supported version
        err, apis3, _ = kw.api_versions_v3(c)
        assert err == 0
        assert apis3[kw.API_API_VERSIONS][1] == hi
    assert_healthy(bad_broker)


def test_api_versions_v3_advertises_required_apis(bad_broker):
    with bad_broker.conn() as c:
        err, apis, throttle = kw.api_versions_v3(c)
        assert err == 0
        for key in (0, 1, 2, 3, 18, 19, 20, 32, 37, 60):
            assert key in apis, f"api {key} not advertised: {sorted(apis)}"
        for key, (lo, hi) in apis.items():
            assert 0 <= lo <= hi, (key, lo, hi)
        # the versions this test suite's raw encoders use
        assert apis[0][0] <= 3 <= apis[0][1]
        assert apis[1][0] <= 4 <= apis[1][1]
        assert apis[3][0] <= 1 <= apis[3][1]


def produce_error(b, batch):
    with b.conn() as c:
        try:
            r = kw.produce_v3(c, b.topic, 0, batch)
        except kw.ConnectionClosed:
            return "closed"
        return r["error_code"]


def test_bad_crc_corrupt_message(bad_broker):
    batch = kw.encode_batch([(b"k", b"v1"), (b"k", b"v2")], corrupt_crc=True)
    assert produce_error(bad_broker, batch) == kw.CORRUPT_MESSAGE
    # the corrupt batch must not be visible
    with bad_broker.conn() as c:
        p = kw.fetch_v4(c, bad_broker.topic, 0, 0, max_wait_ms=100)
        assert p["high_watermark"] == 0 and p["decoded"] == []
    assert_healthy(bad_broker)


@pytest.mark.parametrize("magic", [0, 1, 3, 127])
def test_wrong_magic(bad_broker, magic):
    batch = kw.encode_batch([(b"k", b"v")], magic=magic)
    assert produce_error(bad_broker, batch) in (kw.CORRUPT_MESSAGE, kw.INVALID_RECORD)
    assert_healthy(bad_broker)


@pytest.mark.parametrize("delta", [+100, -10, -40, +1_000_000])
def test_lying_batch_length(bad_broker, delta):
    batch = kw.encode_batch([(b"k", b"value-of-some-length")], batch_length_delta=delta)
    assert produce_error(bad_broker, batch) in (kw.CORRUPT_MESSAGE, kw.INVALID_RECORD)
    with bad_broker.conn() as c:
        p = kw.fetch_v4(c, bad_broker.topic, 0, 0, max_wait_ms=100)
        assert p["high_watermark"] == 0
    assert_healthy(bad_broker)


def test_garbage_records_field(bad_broker):
    for junk in (b"", b"\x00" * 5, os.urandom(200)):
        res = produce_error(bad_broker, junk)
        assert res in (kw.CORRUPT_MESSAGE, kw.INVALID_RECORD, "closed"), (junk[:10], res)
    assert_healthy(bad_broker)


def test_lying_record_count(bad_broker):
    # record count says 5 but only one record present; CRC made valid
    good = bytearray(kw.encode_batch([(b"k", b"v")]))
    count_pos = 8 + 4 + 4 + 1 + 4 + 2 + 4 + 8 + 8 + 8 + 2 + 4
    good[count_pos:count_pos + 4] = kw.i32(5)
    crc = kw.crc32c(bytes(good[21:]))
    good[17:21] = kw.u32(crc)
    assert produce_error(bad_broker, bytes(good)) in (kw.CORRUPT_MESSAGE, kw.INVALID_RECORD)
    assert_healthy(bad_broker)


@pytest.mark.parametrize("n", [-2, -1000, 2 ** 31 - 1])
def test_metadata_bad_array_length(bad_broker, n):
    with bad_broker.conn() as c:
        c.send_raw(kw.frame(kw.request_header_v1(kw.API_METADATA, 1, 1) + kw.i32(n)))
        try:
            resp = c.recv_frame()
            # an answer is acceptable only if it is a well-formed response
            r = kw.Reader(resp)
            assert r.i32() == 1
            kw.parse_metadata_v1(r)
        except kw.ConnectionClosed:
            pass
    assert_healthy(bad_broker)


def test_error_codes_unknown_topic_partition_offset(make_broker):
    b = make_broker(settings={"auto.create.topics.enable": "false"})
    b.topic = unique_topic("codes")
    create_topic(b.bootstrap, b.topic, partitions=2)
    with b.conn() as c:
        batch = kw.encode_batch([(b"k", b"v")])
        r = kw.produce_v3(c, "no-such-topic-xyz", 0, batch)
        assert r["error_code"] == kw.UNKNOWN_TOPIC_OR_PARTITION
        r = kw.produce_v3(c, b.topic, 7, batch)
        assert r["error_code"] == kw.UNKNOWN_TOPIC_OR_PARTITION
        p = kw.fetch_v4(c, "no-such-topic-xyz", 0, 0, max_wait_ms=10)
        assert p["error_code"] == kw.UNKNOWN_TOPIC_OR_PARTITION
        p = kw.fetch_v4(c, b.topic, 5, 0, max_wait_ms=10)
        assert p["error_code"] == kw.UNKNOWN_TOPIC_OR_PARTITION
        # out of range
        r = kw.produce_v3(c, b.topic, 0, kw.encode_batch([(None, b"a"), (None, b"b")]))
        assert r["error_code"] == 0 and r["base_offset"] == 0
        p = kw.fetch_v4(c, b.topic, 0, 3, max_wait_ms=10)
        assert p["error_code"] == 1  # OFFSET_OUT_OF_RANGE
        p = kw.fetch_v4(c, b.topic, 0, -5, max_wait_ms=10)
        assert p["error_code"] == 1
        # fetch at the log end: no error, no records
        p = kw.fetch_v4(c, b.topic, 0, 2, max_wait_ms=10)
        assert p["error_code"] == 0 and p["decoded"] == [] and p["high_watermark"] == 2
        md = kw.metadata_v1(c, ["no-such-topic-xyz"])
        assert md["topics"][0]["error_code"] == kw.UNKNOWN_TOPIC_OR_PARTITION
    assert_healthy(b)


def test_fetch_in_middle_of_batch(bad_broker):
    with bad_broker.conn() as c:
        recs = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(5)]
        r = kw.produce_v3(c, bad_broker.topic, 0, kw.encode_batch(recs))
        assert r["error_code"] == 0
        base = r["base_offset"]
        r2 = kw.produce_v3(c, bad_broker.topic, 0, kw.encode_batch([(b"k5", b"v5")]))
        assert r2["base_offset"] == base + 5
        p = kw.fetch_v4(c, bad_broker.topic, 0, base + 2, max_wait_ms=100)
        assert p["error_code"] == 0
        offs = [x["offset"] for x in p["decoded"]]
        # the whole first batch comes back (clients skip records before their offset)
        assert offs[0] <= base + 2 and base + 2 in offs, offs
        assert [x["value"] for x in p["decoded"] if x["offset"] >= base + 2] == [b"v2", b"v3", b"v4", b"v5"]


def test_many_bad_connections_then_good(bad_broker):
    cases = [kw.i32(-1), kw.i32(200 * 1024 * 1024), kw.frame(kw.i16(-7) + kw.i16(0) + kw.i32(1) + kw.string("x")),
             os.urandom(64), kw.frame(kw.request_header_v1(0, 3, 1) + os.urandom(30))]
    for _ in range(5):
        for payload in cases:
            c = bad_broker.conn()
            try:
                c.send_raw(payload)
            except OSError:
                pass
            c.close()
    time.sleep(0.3)
    assert_healthy(bad_broker)


# --------------------------------------------------------------------------
# The malformed-request table: strings, topic names, negative array lengths,
# compact-length overflows. Each row: (name, request frame, response parser, the
# outcomes Kafka semantics allow). An outcome is "closed" (the broker hung up, and its
# log names the decode failure the row is about) or the error code the parser extracts.
# Every row is followed by `assert_healthy` on new connections.
# --------------------------------------------------------------------------

API_CREATE_TOPICS = 19
INVALID_TOPIC_EXCEPTION = 17
CORR = 77


def raw_string(b: bytes) -> bytes:
    """A non-flexible STRING whose bytes are given as they are (maybe not UTF-8)."""
    return kw.i16(len(b)) + b


def metadata_v1_frame(name: bytes) -> bytes:
    return kw.frame(kw.request_header_v1(kw.API_METADATA, 1, CORR) + kw.i32(1) + raw_string(name))


def produce_v3_frame(name: bytes) -> bytes:
    body = (kw.string(None) + kw.i16(1) + kw.i32(5000) + kw.i32(1) + raw_string(name)
            + kw.i32(1) + kw.i32(0) + kw.nbytes(kw.encode_batch([(b"k", b"v")])))
    return kw.frame(kw.request_header_v1(kw.API_PRODUCE, 3, CORR) + body)


def create_topics_v2_frame(name: bytes, topics_len=None) -> bytes:
    topic = raw_string(name) + kw.i32(1) + kw.i16(1) + kw.i32(0) + kw.i32(0)
    count = kw.i32(1) if topics_len is None else kw.i32(topics_len)
    body = count + topic + kw.i32(5000) + kw.i8(0)
    return kw.frame(kw.request_header_v1(API_CREATE_TOPICS, 2, CORR) + body)


def check_corr(r):
    assert r.i32() == CORR


def metadata_v1_code(resp):
    r = kw.Reader(resp)
    check_corr(r)
    md = kw.parse_metadata_v1(r)
    assert len(md["topics"]) == 1
    return md["topics"][0]["error_code"]


def produce_v3_code(resp):
    r = kw.Reader(resp)
    check_corr(r)
    return kw.parse_produce_v3(r)["topics"][0]["partitions"][0]["error_code"]


def create_topics_v2_code(resp):
    r = kw.Reader(resp)
    check_corr(r)
    r.i32()  # throttle
    topics = r.array(lambda r: (r.string(), r.i16(), r.string()))
    assert len(topics) == 1, topics
    return topics[0][1]


def fetch_v4_frame_topics(count: int) -> bytes:
    body = kw.i32(-1) + kw.i32(100) + kw.i32(1) + kw.i32(1 << 20) + kw.i8(0) + kw.i32(count)
    return kw.frame(kw.request_header_v1(kw.API_FETCH, 4, CORR) + body)


def fetch_v4_frame_partitions(topic: str, count: int) -> bytes:
    body = (kw.i32(-1) + kw.i32(100) + kw.i32(1) + kw.i32(1 << 20) + kw.i8(0) + kw.i32(1)
            + kw.string(topic) + kw.i32(count))
    return kw.frame(kw.request_header_v1(kw.API_FETCH, 4, CORR) + body)


def produce_v3_frame_partitions(topic: str, count: int) -> bytes:
    body = (kw.string(None) + kw.i16(1) + kw.i32(5000) + kw.i32(1) + kw.string(topic)
            + kw.i32(count))
    return kw.frame(kw.request_header_v1(kw.API_PRODUCE, 3, CORR) + body)


def produce_v3_frame_topics(count: int) -> bytes:
    body = kw.string(None) + kw.i16(1) + kw.i32(5000) + kw.i32(count)
    return kw.frame(kw.request_header_v1(kw.API_PRODUCE, 3, CORR) + body)


def metadata_v12_frame(name_len_varint: bytes, tail: bytes = b"abc") -> bytes:
    """Metadata v12 (flexible): one topic whose compact-string name length is given raw."""
    body = kw.uvarint(2) + b"\x00" * 16 + name_len_varint + tail
    return kw.frame(kw.request_header_v2(kw.API_METADATA, 12, CORR) + body)


def create_topics_v5_frame(name_len_varint: bytes) -> bytes:
    """CreateTopics v5 (flexible): one topic whose compact-string name length is raw."""
    body = kw.uvarint(2) + name_len_varint + b"abc"
    return kw.frame(kw.request_header_v2(API_CREATE_TOPICS, 5, CORR) + body)


def only_closed(resp):
    raise AssertionError(f"expected the connection to be closed, got a {len(resp)}-byte response")


INVALID_UTF8 = b"bad-\xff\xfe-\xc3\x28"
TOO_LONG = b"t" * 250
ANY_INVALID_TOPIC = {"closed", INVALID_TOPIC_EXCEPTION}
# A uvarint of 2^32 - 1 (as a compact length: 2^32 - 2 bytes) and one past u32.
VARINT_U32_MAX = b"\xff\xff\xff\xff\x0f"
VARINT_OVER_U32 = b"\xff\xff\xff\xff\x7f"
VARINT_UNTERMINATED = b"\xff\xff\xff\xff\xff\xff"


def malformed_rows(topic):
    return [
        # invalid UTF-8 in a string field: the decoder refuses the string
        ("utf8-metadata-topic", metadata_v1_frame(INVALID_UTF8), metadata_v1_code, {"closed"}),
        ("utf8-produce-topic", produce_v3_frame(INVALID_UTF8), produce_v3_code, {"closed"}),
        ("utf8-create-topics-name", create_topics_v2_frame(INVALID_UTF8), create_topics_v2_code,
         {"closed"}),
        # topic names that are invalid or longer than 249 characters
        ("long-name-create-topics", create_topics_v2_frame(TOO_LONG), create_topics_v2_code,
         {INVALID_TOPIC_EXCEPTION}),
        ("bad-chars-create-topics", create_topics_v2_frame(b"no/slashes"), create_topics_v2_code,
         {INVALID_TOPIC_EXCEPTION}),
        ("dot-create-topics", create_topics_v2_frame(b".."), create_topics_v2_code,
         {INVALID_TOPIC_EXCEPTION}),
        ("empty-create-topics", create_topics_v2_frame(b""), create_topics_v2_code,
         {INVALID_TOPIC_EXCEPTION}),
        ("long-name-metadata-autocreate", metadata_v1_frame(TOO_LONG), metadata_v1_code,
         {INVALID_TOPIC_EXCEPTION}),
        ("bad-chars-metadata-autocreate", metadata_v1_frame(b"sp ace"), metadata_v1_code,
         {INVALID_TOPIC_EXCEPTION}),
        ("long-name-produce", produce_v3_frame(TOO_LONG), produce_v3_code,
         {INVALID_TOPIC_EXCEPTION, kw.UNKNOWN_TOPIC_OR_PARTITION}),
        ("bad-chars-produce", produce_v3_frame(b"a*b"), produce_v3_code,
         {INVALID_TOPIC_EXCEPTION, kw.UNKNOWN_TOPIC_OR_PARTITION}),
        # negative array lengths (-1 is null, which these arrays may not be)
        ("negative-produce-topics", produce_v3_frame_topics(-5), only_closed, {"closed"}),
        ("null-produce-topics", produce_v3_frame_topics(-1), only_closed, {"closed"}),
        ("negative-produce-partitions", produce_v3_frame_partitions(topic, -3), only_closed,
         {"closed"}),
        ("negative-fetch-topics", fetch_v4_frame_topics(-2), only_closed, {"closed"}),
        ("null-fetch-topics", fetch_v4_frame_topics(-1), only_closed, {"closed"}),
        ("negative-fetch-partitions", fetch_v4_frame_partitions(topic, -100), only_closed,
         {"closed"}),
        ("negative-create-topics", create_topics_v2_frame(b"x", topics_len=-7), only_closed,
         {"closed"}),
        ("null-create-topics", create_topics_v2_frame(b"x", topics_len=-1), only_closed,
         {"closed"}),
        # compact-string length overflow in flexible versions
        ("compact-len-u32-max-metadata-v12", metadata_v12_frame(VARINT_U32_MAX), only_closed,
         {"closed"}),
        ("compact-len-over-u32-metadata-v12", metadata_v12_frame(VARINT_OVER_U32), only_closed,
         {"closed"}),
        ("compact-len-unterminated-metadata-v12", metadata_v12_frame(VARINT_UNTERMINATED),
         only_closed, {"closed"}),
        ("compact-len-past-frame-metadata-v12", metadata_v12_frame(kw.uvarint(1000)), only_closed,
         {"closed"}),
        ("compact-len-u32-max-create-topics-v5", create_topics_v5_frame(VARINT_U32_MAX),
         only_closed, {"closed"}),
    ]


ROW_NAMES = [row[0] for row in malformed_rows("t")]

# What the broker logs when it closes for each kind of row (by the row name's first word).
CLOSE_REASONS = {
    "utf8": "invalid utf-8",
    "negative": "Array length is negative",
    "null": "Array length is negative (-1)",
    "compact": "Not enough bytes remaining",
}


def outcome_of(b, frame, parse):
    with b.conn() as c:
        c.send_raw(frame)
        c.sock.settimeout(10)
        try:
            resp = c.recv_frame()
        except kw.ConnectionClosed:
            return "closed"
        return parse(resp)


@pytest.mark.parametrize("row", ROW_NAMES)
def test_malformed_request_table(bad_broker, row):
    name, frame, parse, allowed = next(r for r in malformed_rows(bad_broker.topic) if r[0] == row)
    outcome = outcome_of(bad_broker, frame, parse)
    if outcome == "closed":
        # Closed for the reason the row is about, not by some earlier check.
        reason = CLOSE_REASONS[name.split("-")[0]]
        assert reason in bad_broker.stderr_text(), f"{name}: no close reason {reason!r} in the log"
    assert outcome in allowed, f"{name}: got {outcome!r}, expected one of {allowed}"
    assert_healthy(bad_broker)
    # No topic was created under a name that is not valid.
    with bad_broker.conn() as c:
        md = kw.metadata_v1(c, None)
        for t in md["topics"]:
            assert len(t["name"]) <= 249 and " " not in t["name"] and "/" not in t["name"], t
